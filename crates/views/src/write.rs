//! Output formats for view rows: CSV (RFC 4180), NDJSON (one JSON object per row) and a
//! JSON array of objects. Rows are written as resources arrive, so memory use does not
//! grow with the input; wrap the output in a `BufWriter` when it is a file or socket.
//!
//! CSV: a header row of column names, then one record per row, `CRLF` line ends; a field
//! is quoted when it contains a comma, a double quote, CR or LF (quotes doubled), and an
//! empty string is written `""` so that it differs from null (an empty field). Booleans
//! and numbers are written as in JSON; arrays and objects as compact JSON text.

use crate::compile::View;
use crate::error::ViewError;
use crate::run::Row;
use serde_json::Value;
use std::borrow::Borrow;
use std::io::{BufRead, Write};
use std::str::FromStr;

/// An output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// Comma-separated values with a header row (RFC 4180).
    Csv,
    /// Newline-delimited JSON: one object per row.
    Ndjson,
    /// A JSON array of row objects.
    Json,
}

impl FromStr for Format {
    type Err = ViewError;

    /// `csv`, `ndjson` (or `jsonl`), `json`; also the media types `text/csv`,
    /// `application/x-ndjson`, `application/fhir+ndjson`, `application/json`.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(match s.trim().to_ascii_lowercase().as_str() {
            "csv" | "text/csv" => Format::Csv,
            "ndjson"
            | "jsonl"
            | "application/x-ndjson"
            | "application/ndjson"
            | "application/fhir+ndjson" => Format::Ndjson,
            "json" | "application/json" => Format::Json,
            other => {
                return Err(ViewError::definition(
                    "_format",
                    format!("unknown output format '{other}' (csv, ndjson or json)"),
                ))
            }
        })
    }
}

/// Writes the rows of a view in one [`Format`], resource by resource.
pub struct RowWriter<'v, W: Write> {
    view: &'v View,
    format: Format,
    out: W,
    /// `"name":` for each column, JSON-escaped once.
    keys: Vec<String>,
    rows: u64,
    /// Scratch space for the rows of one resource.
    buf: Vec<Row>,
}

impl<'v, W: Write> RowWriter<'v, W> {
    /// Start writing (the CSV header, or the opening `[`).
    pub fn new(view: &'v View, format: Format, mut out: W) -> Result<Self, ViewError> {
        let keys = view
            .columns()
            .iter()
            .map(|c| serde_json::to_string(&c.name).map(|k| format!("{k}:")))
            .collect::<Result<Vec<_>, _>>()?;
        match format {
            Format::Csv => {
                let mut line = String::new();
                for (i, c) in view.columns().iter().enumerate() {
                    if i > 0 {
                        line.push(',');
                    }
                    push_csv_field(&mut line, &c.name);
                }
                line.push_str("\r\n");
                out.write_all(line.as_bytes())?;
            }
            Format::Json => out.write_all(b"[")?,
            Format::Ndjson => {}
        }
        Ok(Self {
            view,
            format,
            out,
            keys,
            rows: 0,
            buf: Vec::new(),
        })
    }

    /// Run the view on a resource and write its rows; returns how many.
    pub fn write_resource(&mut self, resource: &Value) -> Result<usize, ViewError> {
        let mut buf = std::mem::take(&mut self.buf);
        buf.clear();
        let result = self.view.rows_into(resource, &mut buf).and_then(|()| {
            for row in &buf {
                self.write_row(row)?;
            }
            Ok(buf.len())
        });
        self.buf = buf;
        result
    }

    /// Write one row (one value per column of the view).
    pub fn write_row(&mut self, row: &[Value]) -> Result<(), ViewError> {
        let mut text = String::with_capacity(16 * row.len() + 2);
        match self.format {
            Format::Csv => {
                for (i, v) in row.iter().enumerate() {
                    if i > 0 {
                        text.push(',');
                    }
                    match v {
                        Value::Null => {}
                        Value::String(s) if s.is_empty() => text.push_str("\"\""),
                        Value::String(s) => push_csv_field(&mut text, s),
                        Value::Bool(b) => text.push_str(if *b { "true" } else { "false" }),
                        Value::Number(n) => text.push_str(&n.to_string()),
                        other => push_csv_field(&mut text, &serde_json::to_string(other)?),
                    }
                }
                text.push_str("\r\n");
            }
            Format::Ndjson | Format::Json => {
                if self.format == Format::Json && self.rows > 0 {
                    text.push(',');
                }
                text.push('{');
                for (i, (k, v)) in self.keys.iter().zip(row).enumerate() {
                    if i > 0 {
                        text.push(',');
                    }
                    text.push_str(k);
                    text.push_str(&serde_json::to_string(v)?);
                }
                text.push('}');
                if self.format == Format::Ndjson {
                    text.push('\n');
                }
            }
        }
        self.out.write_all(text.as_bytes())?;
        self.rows += 1;
        Ok(())
    }

    /// Rows written so far.
    pub fn rows_written(&self) -> u64 {
        self.rows
    }

    /// Finish the output (the closing `]` of JSON), flush, and return the writer and the
    /// number of rows written.
    pub fn finish(mut self) -> Result<(W, u64), ViewError> {
        if self.format == Format::Json {
            self.out.write_all(b"]")?;
        }
        self.out.flush()?;
        Ok((self.out, self.rows))
    }
}

/// Append a CSV field, quoting it when RFC 4180 requires.
fn push_csv_field(out: &mut String, field: &str) {
    if field.contains([',', '"', '\r', '\n']) {
        out.push('"');
        for ch in field.chars() {
            if ch == '"' {
                out.push('"');
            }
            out.push(ch);
        }
        out.push('"');
    } else {
        out.push_str(field);
    }
}

fn write_all<W: Write, R: Borrow<Value>>(
    view: &View,
    format: Format,
    resources: impl IntoIterator<Item = R>,
    out: W,
) -> Result<u64, ViewError> {
    let mut w = RowWriter::new(view, format, out)?;
    for r in resources {
        w.write_resource(r.borrow())?;
    }
    Ok(w.finish()?.1)
}

/// Write the rows of `view` over `resources` as CSV; returns the number of rows.
pub fn write_csv<W: Write, R: Borrow<Value>>(
    view: &View,
    resources: impl IntoIterator<Item = R>,
    out: W,
) -> Result<u64, ViewError> {
    write_all(view, Format::Csv, resources, out)
}

/// Write the rows of `view` over `resources` as NDJSON; returns the number of rows.
pub fn write_ndjson<W: Write, R: Borrow<Value>>(
    view: &View,
    resources: impl IntoIterator<Item = R>,
    out: W,
) -> Result<u64, ViewError> {
    write_all(view, Format::Ndjson, resources, out)
}

/// Write the rows of `view` over `resources` as one JSON array; returns the number of rows.
pub fn write_json<W: Write, R: Borrow<Value>>(
    view: &View,
    resources: impl IntoIterator<Item = R>,
    out: W,
) -> Result<u64, ViewError> {
    write_all(view, Format::Json, resources, out)
}

/// Resources read from NDJSON (one JSON resource per line; blank lines are skipped).
pub fn read_ndjson<R: BufRead>(reader: R) -> impl Iterator<Item = Result<Value, ViewError>> {
    reader.lines().filter_map(|line| match line {
        Err(e) => Some(Err(ViewError::Io(e))),
        Ok(l) if l.trim().is_empty() => None,
        Ok(l) => Some(serde_json::from_str(&l).map_err(ViewError::Json)),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn view() -> View {
        View::compile(&json!({
            "resource": "Patient",
            "select": [{"column": [
                {"name": "id", "path": "id"},
                {"name": "family", "path": "name.family.first()"},
                {"name": "given", "path": "name.given", "collection": true},
                {"name": "active", "path": "active"}
            ]}]
        }))
        .unwrap()
    }

    fn patients() -> Vec<Value> {
        vec![
            json!({"resourceType": "Patient", "id": "a", "active": true,
                   "name": [{"family": "O'Hara, \"Jr\"", "given": ["Ann", "B"]}]}),
            json!({"resourceType": "Patient", "id": "b", "name": [{"family": ""}]}),
            json!({"resourceType": "Observation", "id": "x"}),
        ]
    }

    #[test]
    fn csv_quotes_per_rfc_4180() {
        let mut out = Vec::new();
        let n = write_csv(&view(), patients(), &mut out).unwrap();
        assert_eq!(n, 2);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "id,family,given,active\r\n\
             a,\"O'Hara, \"\"Jr\"\"\",\"[\"\"Ann\"\",\"\"B\"\"]\",true\r\n\
             b,\"\",[],\r\n"
        );
        let mut line = String::new();
        push_csv_field(&mut line, "two\nlines");
        assert_eq!(line, "\"two\nlines\"");
    }

    #[test]
    fn ndjson_and_json() {
        let mut out = Vec::new();
        write_ndjson(&view(), patients().iter(), &mut out).unwrap();
        let text = String::from_utf8(out).unwrap();
        let lines: Vec<Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines.len(), 2);
        assert_eq!(
            lines[0],
            json!({"id": "a", "family": "O'Hara, \"Jr\"", "given": ["Ann", "B"], "active": true})
        );
        assert_eq!(lines[1]["active"], Value::Null);

        let mut out = Vec::new();
        write_json(&view(), patients(), &mut out).unwrap();
        let arr: Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(arr.as_array().map(Vec::len), Some(2));
        let mut out = Vec::new();
        write_json(&view(), Vec::<Value>::new(), &mut out).unwrap();
        assert_eq!(out, b"[]");
    }

    #[test]
    fn reads_ndjson_and_parses_formats() {
        let input = "{\"resourceType\":\"Patient\",\"id\":\"a\"}\n\n{not json}\n";
        let items: Vec<_> = read_ndjson(input.as_bytes()).collect();
        assert_eq!(items.len(), 2);
        assert!(items[0].is_ok());
        assert!(items[1].is_err());
        assert_eq!("CSV".parse::<Format>().unwrap(), Format::Csv);
        assert_eq!(
            "application/fhir+ndjson".parse::<Format>().unwrap(),
            Format::Ndjson
        );
        assert!("xml".parse::<Format>().is_err());
    }
}
