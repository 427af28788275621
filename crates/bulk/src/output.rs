//! NDJSON output files, split by size: `<Type>-<n>.ndjson` in the job folder.

use crate::job::OutputFile;
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

/// Writes one resource type's lines, starting a new file when the current one reaches
/// the configured number of resources or bytes.
pub(crate) struct SplitWriter {
    dir: PathBuf,
    rtype: String,
    /// File name prefix (`Observation`, `Observation-error`, `deleted`).
    prefix: String,
    max_resources: u64,
    max_bytes: u64,
    current: Option<(BufWriter<File>, OutputFile)>,
    done: Vec<OutputFile>,
    input_url: Option<String>,
}

impl SplitWriter {
    pub(crate) fn new(
        dir: &Path,
        rtype: &str,
        prefix: &str,
        max_resources: u64,
        max_bytes: u64,
    ) -> Self {
        SplitWriter {
            dir: dir.to_path_buf(),
            rtype: rtype.to_string(),
            prefix: prefix.to_string(),
            max_resources: max_resources.max(1),
            max_bytes: max_bytes.max(1),
            current: None,
            done: vec![],
            input_url: None,
        }
    }

    pub(crate) fn for_input(mut self, url: &str) -> Self {
        self.input_url = Some(url.to_string());
        self
    }

    /// Write one line (`line` holds no newline).
    pub(crate) fn write_line(&mut self, line: &[u8]) -> std::io::Result<()> {
        if let Some((_, f)) = &self.current {
            if f.count >= self.max_resources || f.bytes >= self.max_bytes {
                self.close_current()?;
            }
        }
        if self.current.is_none() {
            let n = self.done.len() + 1;
            let file = format!("{}-{n}.ndjson", self.prefix);
            let w = BufWriter::with_capacity(256 * 1024, File::create(self.dir.join(&file))?);
            self.current = Some((
                w,
                OutputFile {
                    rtype: self.rtype.clone(),
                    file,
                    count: 0,
                    bytes: 0,
                    input_url: self.input_url.clone(),
                },
            ));
        }
        let (w, f) = self.current.as_mut().expect("opened above");
        w.write_all(line)?;
        w.write_all(b"\n")?;
        f.count += 1;
        f.bytes += line.len() as u64 + 1;
        Ok(())
    }

    fn close_current(&mut self) -> std::io::Result<()> {
        if let Some((mut w, f)) = self.current.take() {
            w.flush()?;
            w.into_inner().map_err(|e| e.into_error())?.sync_data()?;
            self.done.push(f);
        }
        Ok(())
    }

    /// Flush and close; the files written (none when nothing was).
    pub(crate) fn finish(mut self) -> std::io::Result<Vec<OutputFile>> {
        self.close_current()?;
        Ok(self.done)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_by_count_and_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let mut w = SplitWriter::new(dir.path(), "Patient", "Patient", 2, 1_000);
        for _ in 0..5 {
            w.write_line(b"{}").unwrap();
        }
        let files = w.finish().unwrap();
        let counts: Vec<u64> = files.iter().map(|f| f.count).collect();
        assert_eq!(counts, vec![2, 2, 1]);
        assert_eq!(files[2].file, "Patient-3.ndjson");
        assert_eq!(
            std::fs::read_to_string(dir.path().join("Patient-1.ndjson")).unwrap(),
            "{}\n{}\n"
        );
        let mut w = SplitWriter::new(dir.path(), "X", "X", 100, 5);
        for _ in 0..3 {
            w.write_line(b"abcd").unwrap();
        }
        assert_eq!(w.finish().unwrap().len(), 3, "5 bytes per file at most");
        let w = SplitWriter::new(dir.path(), "Y", "Y", 100, 5);
        assert!(w.finish().unwrap().is_empty(), "no file without lines");
    }
}
