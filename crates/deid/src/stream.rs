//! Streaming helpers: NDJSON (one resource per line, processed line by line, never the
//! whole file in memory) and Bundles.

use crate::config::ProcessingErrorMode;
use crate::engine::Anonymizer;
use crate::error::DeidError;
use serde_json::Value;
use std::io::{BufRead, BufReader, BufWriter, Write};
use std::path::{Path, PathBuf};

/// Counts from one NDJSON stream.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct NdjsonStats {
    /// Lines read (blank ones included).
    pub lines: u64,
    /// Resources written.
    pub written: u64,
    /// Resources (or unreadable lines) left out under `processingError: skip`.
    pub skipped: u64,
    /// Bundle entries left out under `processingError: skip`.
    pub skipped_entries: u64,
}

/// Counts from a folder of NDJSON files.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct DirStats {
    pub files: u64,
    pub written: u64,
    pub skipped: u64,
    pub skipped_entries: u64,
}

/// Counts from one Bundle.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct BundleStats {
    /// Entries in the output.
    pub entries: u64,
    /// Entries left out under `processingError: skip`.
    pub skipped: u64,
}

fn read_line<R: BufRead>(reader: &mut R, buf: &mut String, line: u64) -> Result<usize, DeidError> {
    buf.clear();
    reader.read_line(buf).map_err(|e| {
        if e.kind() == std::io::ErrorKind::InvalidData {
            DeidError::BadLine {
                line,
                message: "not UTF-8".into(),
            }
        } else {
            DeidError::Io(e)
        }
    })
}

impl Anonymizer {
    /// De-identify an NDJSON stream line by line (`dateShiftScope: file` uses an empty file
    /// name; see [`Anonymizer::anonymize_ndjson_file`]). Blank lines are skipped. Errors
    /// carry the line number; with `processingError: skip` failing lines are counted and
    /// left out instead. Pass a buffered writer: each line is written on its own.
    pub fn anonymize_ndjson<R: BufRead, W: Write>(
        &self,
        reader: R,
        writer: W,
    ) -> Result<NdjsonStats, DeidError> {
        self.anonymize_ndjson_scoped(reader, writer, None)
    }

    /// As [`Anonymizer::anonymize_ndjson`], with `file_name` as the `dateShiftScope: file`
    /// scope.
    pub fn anonymize_ndjson_file<R: BufRead, W: Write>(
        &self,
        reader: R,
        writer: W,
        file_name: &str,
    ) -> Result<NdjsonStats, DeidError> {
        self.anonymize_ndjson_scoped(reader, writer, Some(file_name))
    }

    fn anonymize_ndjson_scoped<R: BufRead, W: Write>(
        &self,
        mut reader: R,
        mut writer: W,
        file_name: Option<&str>,
    ) -> Result<NdjsonStats, DeidError> {
        let mut stats = NdjsonStats::default();
        let mut buf = String::new();
        let skip = self.mode() == ProcessingErrorMode::Skip;
        let mut out = Vec::with_capacity(4096);
        loop {
            let line_no = stats.lines + 1;
            let n = match read_line(&mut reader, &mut buf, line_no) {
                Ok(n) => n,
                Err(DeidError::Io(e)) => return Err(DeidError::Io(e)),
                Err(_) if skip => {
                    stats.lines += 1;
                    stats.skipped += 1;
                    continue;
                }
                Err(e) => return Err(e),
            };
            if n == 0 {
                break;
            }
            stats.lines += 1;
            let text = buf.trim();
            if text.is_empty() {
                continue;
            }
            let mut value: Value = match serde_json::from_str(text) {
                Ok(v) => v,
                Err(e) if !skip => {
                    return Err(DeidError::BadLine {
                        line: line_no,
                        message: e.to_string(),
                    })
                }
                Err(_) => {
                    stats.skipped += 1;
                    continue;
                }
            };
            match self.anonymize_counted(&mut value, file_name) {
                Ok(o) => stats.skipped_entries += o.skipped_entries,
                Err(_) if skip => {
                    stats.skipped += 1;
                    continue;
                }
                Err(e) => {
                    return Err(DeidError::Line {
                        line: line_no,
                        source: Box::new(e),
                    })
                }
            }
            out.clear();
            serde_json::to_writer(&mut out, &value).map_err(|e| DeidError::Io(e.into()))?;
            out.push(b'\n');
            writer.write_all(&out)?;
            stats.written += 1;
        }
        writer.flush()?;
        Ok(stats)
    }

    /// A pre-pass over an NDJSON stream: learn the PHI terms of its Patient, RelatedPerson
    /// and Person resources (so the free text of resources read before their Patient is
    /// scrubbed too). Unreadable lines are ignored. Returns the lines read.
    pub fn learn_ndjson<R: BufRead>(&self, mut reader: R) -> Result<u64, DeidError> {
        let mut buf = String::new();
        let mut lines = 0;
        loop {
            match read_line(&mut reader, &mut buf, lines + 1) {
                Ok(0) => break,
                Ok(_) => {}
                Err(DeidError::Io(e)) => return Err(DeidError::Io(e)),
                Err(_) => {
                    lines += 1;
                    continue;
                }
            }
            lines += 1;
            let t = buf.trim();
            // Cheap filter: only people teach.
            if !(t.contains("\"Patient\"")
                || t.contains("\"RelatedPerson\"")
                || t.contains("\"Person\""))
            {
                continue;
            }
            if let Ok(v) = serde_json::from_str::<Value>(t) {
                self.learn(&v);
            }
        }
        Ok(lines)
    }

    /// De-identify a Bundle: each entry's resource as a resource of its own (dates shift by
    /// the entry's id under `resource` scope), then the Bundle's own rules; `fullUrl` and
    /// `request.url` follow hashed ids, so references between entries still resolve. With
    /// `processingError: skip` failing entries are left out and counted.
    pub fn anonymize_bundle(&self, mut bundle: Value) -> Result<(Value, BundleStats), DeidError> {
        if bundle.get("resourceType").and_then(Value::as_str) != Some("Bundle") {
            return Err(DeidError::InvalidResource("expected a Bundle".into()));
        }
        let o = self.anonymize_counted(&mut bundle, None)?;
        let entries = bundle
            .get("entry")
            .and_then(Value::as_array)
            .map_or(0, |a| a.len() as u64);
        Ok((
            bundle,
            BundleStats {
                entries,
                skipped: o.skipped_entries,
            },
        ))
    }

    /// De-identify every `*.ndjson` file of the folder `input` into `output` (created if
    /// needed; the same file names): first a pre-pass learns the PHI terms of every
    /// Patient, RelatedPerson and Person, then each file is processed line by line with
    /// its file name as the `dateShiftScope: file` scope. `output` must differ from
    /// `input`. This is what `salus deid IN OUT --config` needs.
    pub fn anonymize_ndjson_dir(&self, input: &Path, output: &Path) -> Result<DirStats, DeidError> {
        let same = match (input.canonicalize(), output.canonicalize()) {
            (Ok(a), Ok(b)) => a == b,
            _ => false,
        };
        if same {
            return Err(DeidError::Usage(
                "the output folder must differ from the input folder".into(),
            ));
        }
        let mut files: Vec<PathBuf> = std::fs::read_dir(input)?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.is_file() && p.extension().is_some_and(|e| e == "ndjson"))
            .collect();
        files.sort();
        let name_of = |p: &Path| {
            p.file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default()
        };
        let in_file = |p: &Path, e: DeidError| DeidError::File {
            file: name_of(p),
            source: Box::new(e),
        };
        for f in &files {
            let r = BufReader::new(std::fs::File::open(f)?);
            self.learn_ndjson(r).map_err(|e| in_file(f, e))?;
        }
        std::fs::create_dir_all(output)?;
        let mut stats = DirStats::default();
        for f in &files {
            let name = name_of(f);
            let r = BufReader::new(std::fs::File::open(f)?);
            let w = BufWriter::new(std::fs::File::create(output.join(&name))?);
            let s = self
                .anonymize_ndjson_file(r, w, &name)
                .map_err(|e| in_file(f, e))?;
            stats.files += 1;
            stats.written += s.written;
            stats.skipped += s.skipped;
            stats.skipped_entries += s.skipped_entries;
        }
        Ok(stats)
    }
}
