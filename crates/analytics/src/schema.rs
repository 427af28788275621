//! SQL-on-FHIR column types → Arrow types, and view rows → [`RecordBatch`]es.
//!
//! | SQL-on-FHIR `type` | Arrow | why |
//! | --- | --- | --- |
//! | `boolean` | `Boolean` | |
//! | `integer`, `positiveInt`, `unsignedInt`, `integer64` | `Int64` | one integer type is simpler in SQL; `integer64` needs it |
//! | `decimal` | `Float64` | FHIR decimals have no fixed scale (`1.5`, `1.50`, `0.0001`), which `Decimal128(p, s)` needs; analytics wants arithmetic. Digits past f64 precision (~15–17 significant) are lost, and `1.50` reads back as `1.5`: the FHIR store keeps the original |
//! | `date`, `dateTime`, `instant`, `time` | `Utf8` (the FHIR text) | FHIR dates may be partial (`2020`, `2020-05`) and carry their own offset; `Date32`/`Timestamp` would have to invent a day or a zone. ISO text sorts correctly within one precision; cast in SQL (`CAST(substr(d, 1, 10) AS DATE)`) when the data are complete |
//! | `string`, `code`, `id`, `uri`, `url`, `canonical`, `oid`, `uuid`, `markdown`, `base64Binary`, `xhtml` | `Utf8` | |
//! | anything else, or no `type` | `Utf8` | JSON text for objects and arrays (a `Coding` becomes `{"system":…}`), the value itself for a string, the literal for a number or boolean |
//!
//! A `collection: true` column is a `List` of the item type above (item nullable). Every
//! column is nullable.

use crate::error::{AnalyticsError, Result};
use datafusion::arrow::array::{
    ArrayBuilder, ArrayRef, BooleanBuilder, Float64Builder, Int64Builder, ListBuilder,
    StringBuilder,
};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::arrow::record_batch::RecordBatch;
use salus_views::{Column, View};
use serde_json::Value;
use std::sync::Arc;

/// Default number of rows in one [`RecordBatch`].
pub const DEFAULT_BATCH_ROWS: usize = 8192;

/// The storage kind of one view column's items.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ValueKind {
    /// Text (`Utf8`): strings, codes, dates as written, JSON text of complex values.
    Text,
    /// `Boolean`.
    Boolean,
    /// `Int64`.
    Integer,
    /// `Float64`.
    Decimal,
}

impl ValueKind {
    /// The kind for a SQL-on-FHIR column `type` (a FHIR type name; `None` when the view
    /// gives none).
    pub fn for_type(type_name: Option<&str>) -> ValueKind {
        // Types may be given as URIs (`http://hl7.org/fhirpath/System.Integer`): use the tail.
        let Some(t) = type_name else {
            return ValueKind::Text;
        };
        let t = t.rsplit(['/', '.']).next().unwrap_or(t);
        match t {
            "boolean" | "Boolean" => ValueKind::Boolean,
            "integer" | "positiveInt" | "unsignedInt" | "integer64" | "Integer" | "Long" => {
                ValueKind::Integer
            }
            "decimal" | "Decimal" => ValueKind::Decimal,
            _ => ValueKind::Text,
        }
    }

    /// The Arrow type of one item.
    pub fn data_type(self) -> DataType {
        match self {
            ValueKind::Text => DataType::Utf8,
            ValueKind::Boolean => DataType::Boolean,
            ValueKind::Integer => DataType::Int64,
            ValueKind::Decimal => DataType::Float64,
        }
    }
}

/// The Arrow field for one view column.
pub fn column_field(column: &Column) -> Field {
    let item = ValueKind::for_type(column.type_name.as_deref()).data_type();
    let data_type = if column.collection {
        DataType::List(Arc::new(Field::new_list_field(item, true)))
    } else {
        item
    };
    let mut field = Field::new(&column.name, data_type, true);
    let mut meta = std::collections::HashMap::new();
    if let Some(t) = &column.type_name {
        meta.insert("fhir.type".to_string(), t.clone());
    }
    if let Some(d) = &column.description {
        meta.insert("description".to_string(), d.clone());
    }
    if !meta.is_empty() {
        field = field.with_metadata(meta);
    }
    field
}

/// The Arrow schema of a view: one nullable field per column, in order.
pub fn view_schema(view: &View) -> SchemaRef {
    Arc::new(Schema::new(
        view.columns().iter().map(column_field).collect::<Vec<_>>(),
    ))
}

enum ColumnBuilder {
    Text(StringBuilder),
    Boolean(BooleanBuilder),
    Integer(Int64Builder),
    Decimal(Float64Builder),
    TextList(ListBuilder<StringBuilder>),
    BooleanList(ListBuilder<BooleanBuilder>),
    IntegerList(ListBuilder<Int64Builder>),
    DecimalList(ListBuilder<Float64Builder>),
}

impl ColumnBuilder {
    fn new(kind: ValueKind, collection: bool) -> Self {
        match (kind, collection) {
            (ValueKind::Text, false) => Self::Text(StringBuilder::new()),
            (ValueKind::Boolean, false) => Self::Boolean(BooleanBuilder::new()),
            (ValueKind::Integer, false) => Self::Integer(Int64Builder::new()),
            (ValueKind::Decimal, false) => Self::Decimal(Float64Builder::new()),
            (ValueKind::Text, true) => Self::TextList(ListBuilder::new(StringBuilder::new())),
            (ValueKind::Boolean, true) => {
                Self::BooleanList(ListBuilder::new(BooleanBuilder::new()))
            }
            (ValueKind::Integer, true) => Self::IntegerList(ListBuilder::new(Int64Builder::new())),
            (ValueKind::Decimal, true) => {
                Self::DecimalList(ListBuilder::new(Float64Builder::new()))
            }
        }
    }

    /// Whether `value` fits this column (checked before anything is appended, so a bad
    /// resource leaves the builder as it was).
    fn check(&self, value: &Value) -> std::result::Result<(), String> {
        let item: fn(&Value) -> std::result::Result<(), String> = match self {
            Self::Text(_) | Self::TextList(_) => return Ok(()),
            Self::Boolean(_) | Self::BooleanList(_) => |v| boolean(v).map(drop),
            Self::Integer(_) | Self::IntegerList(_) => |v| integer(v).map(drop),
            Self::Decimal(_) | Self::DecimalList(_) => |v| decimal(v).map(drop),
        };
        let list = matches!(
            self,
            Self::BooleanList(_) | Self::IntegerList(_) | Self::DecimalList(_)
        );
        match value {
            Value::Array(items) if list => items.iter().try_for_each(item),
            v => item(v),
        }
    }

    /// Append a value that passed [`ColumnBuilder::check`].
    fn append(&mut self, value: &Value) {
        match self {
            Self::Text(b) => b.append_option(text(value)),
            Self::Boolean(b) => b.append_option(boolean(value).ok().flatten()),
            Self::Integer(b) => b.append_option(integer(value).ok().flatten()),
            Self::Decimal(b) => b.append_option(decimal(value).ok().flatten()),
            Self::TextList(b) => push_list(b, value, |b, v| b.append_option(text(v))),
            Self::BooleanList(b) => {
                push_list(b, value, |b, v| b.append_option(boolean(v).ok().flatten()))
            }
            Self::IntegerList(b) => {
                push_list(b, value, |b, v| b.append_option(integer(v).ok().flatten()))
            }
            Self::DecimalList(b) => {
                push_list(b, value, |b, v| b.append_option(decimal(v).ok().flatten()))
            }
        }
    }

    fn finish(&mut self) -> ArrayRef {
        match self {
            Self::Text(b) => Arc::new(b.finish()),
            Self::Boolean(b) => Arc::new(b.finish()),
            Self::Integer(b) => Arc::new(b.finish()),
            Self::Decimal(b) => Arc::new(b.finish()),
            Self::TextList(b) => Arc::new(b.finish()),
            Self::BooleanList(b) => Arc::new(b.finish()),
            Self::IntegerList(b) => Arc::new(b.finish()),
            Self::DecimalList(b) => Arc::new(b.finish()),
        }
    }
}

/// A list cell: `null` is a null list; an array is a list (its `null`s null items); a single
/// value (a collection column whose path gave one item, as some runners emit) a list of one.
fn push_list<B: ArrayBuilder>(
    b: &mut ListBuilder<B>,
    value: &Value,
    mut item: impl FnMut(&mut B, &Value),
) {
    match value {
        Value::Null => b.append_null(),
        Value::Array(items) => {
            for v in items {
                item(b.values(), v);
            }
            b.append(true);
        }
        v => {
            item(b.values(), v);
            b.append(true);
        }
    }
}

fn text(value: &Value) -> Option<String> {
    match value {
        Value::Null => None,
        Value::String(s) => Some(s.clone()),
        other => Some(other.to_string()),
    }
}

fn boolean(value: &Value) -> std::result::Result<Option<bool>, String> {
    match value {
        Value::Null => Ok(None),
        Value::Bool(b) => Ok(Some(*b)),
        Value::String(s) if s == "true" => Ok(Some(true)),
        Value::String(s) if s == "false" => Ok(Some(false)),
        other => Err(format!("{other} is not a boolean")),
    }
}

fn integer(value: &Value) -> std::result::Result<Option<i64>, String> {
    match value {
        Value::Null => Ok(None),
        Value::Number(n) => n
            .as_i64()
            .map(Some)
            .ok_or_else(|| format!("{n} is not a 64-bit integer")),
        Value::String(s) => s
            .parse::<i64>()
            .map(Some)
            .map_err(|_| format!("\"{s}\" is not an integer")),
        other => Err(format!("{other} is not an integer")),
    }
}

fn decimal(value: &Value) -> std::result::Result<Option<f64>, String> {
    match value {
        Value::Null => Ok(None),
        Value::Number(n) => n
            .as_f64()
            .map(Some)
            .ok_or_else(|| format!("{n} is not a decimal")),
        Value::String(s) => s
            .parse::<f64>()
            .ok()
            .filter(|f| f.is_finite())
            .map(Some)
            .ok_or_else(|| format!("\"{s}\" is not a decimal")),
        other => Err(format!("{other} is not a decimal")),
    }
}

/// Accumulates view rows into Arrow columns; [`BatchBuilder::finish`] gives a
/// [`RecordBatch`] and starts the next one.
pub struct BatchBuilder {
    view: String,
    schema: SchemaRef,
    columns: Vec<ColumnBuilder>,
    rows: usize,
}

impl BatchBuilder {
    /// A builder for the rows of `view`.
    pub fn new(view: &View) -> Self {
        let schema = view_schema(view);
        let columns = view
            .columns()
            .iter()
            .map(|c| ColumnBuilder::new(ValueKind::for_type(c.type_name.as_deref()), c.collection))
            .collect();
        BatchBuilder {
            view: view.name().unwrap_or("(unnamed)").to_string(),
            schema,
            columns,
            rows: 0,
        }
    }

    /// The schema of the batches built.
    pub fn schema(&self) -> &SchemaRef {
        &self.schema
    }

    /// Rows pushed since the last [`BatchBuilder::finish`].
    pub fn len(&self) -> usize {
        self.rows
    }

    /// Whether no row was pushed since the last [`BatchBuilder::finish`].
    pub fn is_empty(&self) -> bool {
        self.rows == 0
    }

    /// Append one row (one value per column). A value that does not fit its column type is
    /// an [`AnalyticsError::Value`], and nothing is appended.
    pub fn push(&mut self, row: &[Value]) -> Result<()> {
        self.push_rows(&[row])
    }

    /// Append the rows of one resource: all of them, or none when one value does not fit.
    pub fn push_rows<R: AsRef<[Value]>>(&mut self, rows: &[R]) -> Result<()> {
        for row in rows {
            self.check(row.as_ref())?;
        }
        for row in rows {
            for (b, v) in self.columns.iter_mut().zip(row.as_ref()) {
                b.append(v);
            }
        }
        self.rows += rows.len();
        Ok(())
    }

    fn check(&self, row: &[Value]) -> Result<()> {
        if row.len() != self.columns.len() {
            return Err(AnalyticsError::Value {
                view: self.view.clone(),
                column: String::new(),
                message: format!(
                    "row has {} values for {} columns",
                    row.len(),
                    self.columns.len()
                ),
            });
        }
        for (i, (b, v)) in self.columns.iter().zip(row).enumerate() {
            b.check(v).map_err(|message| AnalyticsError::Value {
                view: self.view.clone(),
                column: self.schema.field(i).name().clone(),
                message,
            })?;
        }
        Ok(())
    }

    /// The rows pushed so far as a batch; the builder is empty afterwards.
    pub fn finish(&mut self) -> Result<RecordBatch> {
        let arrays: Vec<ArrayRef> = self.columns.iter_mut().map(ColumnBuilder::finish).collect();
        self.rows = 0;
        Ok(RecordBatch::try_new(self.schema.clone(), arrays)?)
    }
}

/// Run `view` over `resources` and collect its rows as batches of about `batch_rows` rows
/// (a batch is closed after the resource that fills it, so one resource's rows stay together).
pub fn view_batches<I, R>(view: &View, resources: I, batch_rows: usize) -> Result<Vec<RecordBatch>>
where
    I: IntoIterator<Item = R>,
    R: std::borrow::Borrow<Value>,
{
    let batch_rows = batch_rows.max(1);
    let mut builder = BatchBuilder::new(view);
    let mut out = Vec::new();
    let mut rows = Vec::new();
    for r in resources {
        rows.clear();
        view.rows_into(r.borrow(), &mut rows)?;
        builder.push_rows(&rows)?;
        if builder.len() >= batch_rows {
            out.push(builder.finish()?);
        }
    }
    if !builder.is_empty() {
        out.push(builder.finish()?);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::arrow::array::{Array, AsArray};
    use datafusion::arrow::datatypes::Int64Type;
    use serde_json::json;

    #[test]
    fn kinds_follow_the_declared_type() {
        assert_eq!(ValueKind::for_type(Some("boolean")), ValueKind::Boolean);
        assert_eq!(ValueKind::for_type(Some("positiveInt")), ValueKind::Integer);
        assert_eq!(ValueKind::for_type(Some("decimal")), ValueKind::Decimal);
        assert_eq!(ValueKind::for_type(Some("dateTime")), ValueKind::Text);
        assert_eq!(
            ValueKind::for_type(Some("CodeableConcept")),
            ValueKind::Text
        );
        assert_eq!(ValueKind::for_type(None), ValueKind::Text);
        assert_eq!(
            ValueKind::for_type(Some("http://hl7.org/fhirpath/System.Integer")),
            ValueKind::Integer
        );
    }

    #[test]
    fn rows_become_batches() {
        let view = View::compile(&json!({
            "resource": "Patient", "name": "p",
            "select": [{"column": [
                {"name": "id", "path": "id", "type": "id"},
                {"name": "given", "path": "name.given", "type": "string", "collection": true},
                {"name": "multiple", "path": "multipleBirth.ofType(integer)", "type": "integer"}
            ]}]
        }))
        .unwrap();
        let pats = [
            json!({"resourceType": "Patient", "id": "a", "name": [{"given": ["A", "B"]}], "multipleBirthInteger": 2}),
            json!({"resourceType": "Patient", "id": "b"}),
            json!({"resourceType": "Patient", "id": "c"}),
        ];
        let batches = view_batches(&view, pats.iter(), 2).unwrap();
        assert_eq!(batches.len(), 2);
        assert_eq!(batches[1].num_rows(), 1);
        assert_eq!(batches[0].num_rows(), 2);
        let ints = batches[0].column(2).as_primitive::<Int64Type>();
        assert_eq!(ints.value(0), 2);
        assert!(ints.is_null(1));
        let given = batches[0].column(1).as_list::<i32>();
        assert_eq!(given.value(0).len(), 2);
    }

    #[test]
    fn a_value_that_does_not_fit_is_a_user_error() {
        let view = View::compile(&json!({
            "resource": "Patient", "name": "p",
            "select": [{"column": [{"name": "id", "path": "id", "type": "boolean"}]}]
        }))
        .unwrap();
        let mut b = BatchBuilder::new(&view);
        let err = b.push(&[json!("abc")]).unwrap_err();
        assert!(err.is_user_error());
        assert!(b.is_empty());
        b.push(&[json!(true)]).unwrap();
        assert_eq!(b.finish().unwrap().num_rows(), 1);
        assert!(err.to_string().contains("column 'id'"), "{err}");
    }
}
