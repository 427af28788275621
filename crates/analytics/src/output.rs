//! Query results as text: an aligned table (arrow's pretty printer), CSV, a JSON array,
//! JSON lines, or Parquet bytes.

use crate::error::{AnalyticsError, Result};
use datafusion::arrow::array::{Array, ArrayRef, AsArray, StringBuilder};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::arrow::json::writer::{JsonArray, LineDelimited};
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::arrow::util::display::{ArrayFormatter, FormatOptions};
use datafusion::arrow::util::pretty::pretty_format_batches_with_schema;
use datafusion::parquet::arrow::ArrowWriter;
use std::io::Write;
use std::str::FromStr;
use std::sync::Arc;

/// An output format for query results.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutputFormat {
    /// An aligned text table with a header.
    Table,
    /// CSV with a header row; list columns are written as JSON arrays.
    Csv,
    /// One JSON array holding one object per row (nulls written as `null`).
    Json,
    /// One JSON object per row (nulls written as `null`).
    JsonLines,
    /// A Parquet file.
    Parquet,
}

impl FromStr for OutputFormat {
    type Err = AnalyticsError;

    fn from_str(s: &str) -> Result<Self> {
        match s.to_ascii_lowercase().as_str() {
            "table" | "text" => Ok(Self::Table),
            "csv" => Ok(Self::Csv),
            "json" => Ok(Self::Json),
            "ndjson" | "jsonl" | "json-lines" | "jsonlines" => Ok(Self::JsonLines),
            "parquet" => Ok(Self::Parquet),
            other => Err(AnalyticsError::Invalid(format!(
                "unknown output format '{other}' (table, csv, json, ndjson, parquet)"
            ))),
        }
    }
}

/// Write `batches` (all of `schema`) to `out` in `format`.
pub fn write_output<W: Write + Send>(
    schema: &SchemaRef,
    batches: &[RecordBatch],
    format: OutputFormat,
    mut out: W,
) -> Result<()> {
    let io = |e| AnalyticsError::io("(output)", e);
    match format {
        OutputFormat::Table => {
            let table = pretty_format_batches_with_schema(schema.clone(), batches)?;
            writeln!(out, "{table}").map_err(io)?;
        }
        OutputFormat::Csv => {
            let mut w = datafusion::arrow::csv::WriterBuilder::new()
                .with_header(true)
                .build(&mut out);
            let flat = flat_schema(schema);
            if batches.is_empty() {
                w.write(&RecordBatch::new_empty(flat.clone()))?;
            }
            for b in batches {
                w.write(&flatten_lists(&flat, b)?)?;
            }
        }
        OutputFormat::Json => {
            let mut w = datafusion::arrow::json::WriterBuilder::new()
                .with_explicit_nulls(true)
                .build::<_, JsonArray>(&mut out);
            for b in batches {
                w.write(b)?;
            }
            w.finish()?;
        }
        OutputFormat::JsonLines => {
            let mut w = datafusion::arrow::json::WriterBuilder::new()
                .with_explicit_nulls(true)
                .build::<_, LineDelimited>(&mut out);
            for b in batches {
                w.write(b)?;
            }
            w.finish()?;
        }
        OutputFormat::Parquet => {
            let mut w = ArrowWriter::try_new(&mut out, schema.clone(), None)?;
            for b in batches {
                w.write(b)?;
            }
            w.close()?;
        }
    }
    out.flush().map_err(io)
}

/// `batches` as an aligned text table.
pub fn to_table_string(schema: &SchemaRef, batches: &[RecordBatch]) -> Result<String> {
    Ok(pretty_format_batches_with_schema(schema.clone(), batches)?.to_string())
}

fn is_nested(t: &DataType) -> bool {
    matches!(
        t,
        DataType::List(_)
            | DataType::LargeList(_)
            | DataType::FixedSizeList(..)
            | DataType::Struct(_)
            | DataType::Map(..)
    )
}

/// The schema with nested columns turned into text (CSV has no nesting).
fn flat_schema(schema: &SchemaRef) -> SchemaRef {
    Arc::new(Schema::new(
        schema
            .fields()
            .iter()
            .map(|f| {
                if is_nested(f.data_type()) {
                    Field::new(f.name(), DataType::Utf8, true)
                } else {
                    f.as_ref().clone()
                }
            })
            .collect::<Vec<_>>(),
    ))
}

fn flatten_lists(flat: &SchemaRef, batch: &RecordBatch) -> Result<RecordBatch> {
    let columns = batch
        .columns()
        .iter()
        .map(|c| {
            if is_nested(c.data_type()) {
                nested_as_json(c)
            } else {
                Ok(c.clone())
            }
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(RecordBatch::try_new(flat.clone(), columns)?)
}

/// A list column as JSON text per row (`["a","b"]`); other nested columns as arrow's
/// display text.
fn nested_as_json(column: &ArrayRef) -> Result<ArrayRef> {
    let mut out = StringBuilder::new();
    if let Some(list) = column.as_list_opt::<i32>() {
        for i in 0..list.len() {
            if list.is_null(i) {
                out.append_null();
                continue;
            }
            let items = list.value(i);
            let mut values = Vec::with_capacity(items.len());
            let fmt = ArrayFormatter::try_new(items.as_ref(), &FormatOptions::default())?;
            for j in 0..items.len() {
                values.push(if items.is_null(j) {
                    serde_json::Value::Null
                } else {
                    let text = fmt.value(j).to_string();
                    match items.data_type() {
                        DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View => {
                            serde_json::Value::String(text)
                        }
                        _ => serde_json::from_str(&text).unwrap_or(serde_json::Value::String(text)),
                    }
                });
            }
            out.append_value(serde_json::Value::Array(values).to_string());
        }
    } else {
        let fmt = ArrayFormatter::try_new(column.as_ref(), &FormatOptions::default())?;
        for i in 0..column.len() {
            if column.is_null(i) {
                out.append_null();
            } else {
                out.append_value(fmt.value(i).to_string());
            }
        }
    }
    Ok(Arc::new(out.finish()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_parse() {
        assert_eq!("CSV".parse::<OutputFormat>().unwrap(), OutputFormat::Csv);
        assert_eq!(
            "ndjson".parse::<OutputFormat>().unwrap(),
            OutputFormat::JsonLines
        );
        assert_eq!("json".parse::<OutputFormat>().unwrap(), OutputFormat::Json);
        assert!("xml".parse::<OutputFormat>().unwrap_err().is_user_error());
    }
}
