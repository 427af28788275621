//! Errors. The caller's problems (a bad ViewDefinition, a value that does not fit its
//! declared column type, SQL that does not plan, a write statement, an unknown view or
//! measure, a directory that holds no materialized view) are told apart from the
//! environment's (I/O, Parquet, an engine failure) by [`AnalyticsError::is_user_error`].

use datafusion::arrow::error::ArrowError;
use datafusion::error::DataFusionError;
use datafusion::parquet::errors::ParquetError;
use salus_views::ViewError;
use thiserror::Error;

/// Why a view could not be materialized or queried, or a measure evaluated.
#[derive(Debug, Error)]
pub enum AnalyticsError {
    /// Compiling or running the ViewDefinition failed (see [`ViewError::is_user_error`]).
    #[error(transparent)]
    View(#[from] ViewError),
    /// A view value does not fit the Arrow type of its column (a `boolean` column holding
    /// a string, an `integer` column holding `1.5`).
    #[error("view '{view}', column '{column}': {message}")]
    Value {
        /// The view name.
        view: String,
        /// The column name.
        column: String,
        /// What is wrong with the value.
        message: String,
    },
    /// The request is not valid: a view without a usable `name`, a bad measurement period,
    /// a change without a resource type or id, an unknown output format.
    #[error("invalid request: {0}")]
    Invalid(String),
    /// Nothing is materialized under that name, or the materialized table was built from
    /// another ViewDefinition (the `view_hash` differs: rebuild it in full).
    #[error("materialized view '{view}': {message}")]
    Materialized {
        /// The view name.
        view: String,
        /// What is wrong.
        message: String,
    },
    /// The SQL does not parse or plan (unknown table or column, bad syntax, type errors).
    #[error("SQL error: {0}")]
    Sql(String),
    /// The SQL would change something: only queries are allowed.
    #[error("read-only: {0} statements are not allowed; only queries (SELECT, WITH, VALUES, EXPLAIN, SHOW, DESCRIBE) are")]
    ReadOnly(String),
    /// The result has more rows than the caller may receive at once.
    #[error(
        "the result has more than {0} rows: narrow the query (WHERE, GROUP BY) or add a LIMIT"
    )]
    TooManyRows(usize),
    /// The statement ran longer than allowed and was cancelled.
    #[error("the query was cancelled after {}: narrow it or aggregate first", humantime(*.0))]
    Timeout(std::time::Duration),
    /// Unknown measure id.
    #[error("unknown measure '{0}'")]
    UnknownMeasure(String),
    /// Reading or writing files failed.
    #[error("i/o error on {path}: {source}")]
    Io {
        /// The file or directory.
        path: String,
        /// The underlying error.
        source: std::io::Error,
    },
    /// A manifest or key file that is not what this crate wrote.
    #[error("corrupt materialized data in {path}: {message}")]
    Corrupt {
        /// The file.
        path: String,
        /// What is wrong.
        message: String,
    },
    /// Arrow failed (building or converting arrays).
    #[error("arrow error: {0}")]
    Arrow(#[from] ArrowError),
    /// Parquet failed (writing or reading a part file).
    #[error("parquet error: {0}")]
    Parquet(#[from] ParquetError),
    /// The query engine failed while executing.
    #[error("query engine error: {0}")]
    Engine(DataFusionError),
}

impl From<DataFusionError> for AnalyticsError {
    fn from(e: DataFusionError) -> Self {
        if is_user_sql_error(&e) {
            Self::Sql(e.to_string())
        } else {
            Self::Engine(e)
        }
    }
}

/// Whether a DataFusion error is about the statement (parsing, planning, names, types)
/// rather than about running it; looks through the wrappers DataFusion adds.
fn is_user_sql_error(e: &DataFusionError) -> bool {
    match e {
        DataFusionError::SQL(..)
        | DataFusionError::Plan(_)
        | DataFusionError::SchemaError(..)
        | DataFusionError::NotImplemented(_) => true,
        DataFusionError::Context(_, inner) | DataFusionError::Diagnostic(_, inner) => {
            is_user_sql_error(inner)
        }
        DataFusionError::Collection(errors) => errors.first().is_some_and(is_user_sql_error),
        _ => false,
    }
}

impl AnalyticsError {
    /// Whether the error is due to what the caller supplied rather than to the
    /// environment.
    pub fn is_user_error(&self) -> bool {
        match self {
            Self::View(v) => v.is_user_error(),
            Self::Value { .. }
            | Self::Invalid(_)
            | Self::Materialized { .. }
            | Self::Sql(_)
            | Self::ReadOnly(_)
            | Self::TooManyRows(_)
            | Self::Timeout(_)
            | Self::UnknownMeasure(_) => true,
            Self::Io { .. }
            | Self::Corrupt { .. }
            | Self::Arrow(_)
            | Self::Parquet(_)
            | Self::Engine(_) => false,
        }
    }

    pub(crate) fn io(path: impl AsRef<std::path::Path>, source: std::io::Error) -> Self {
        Self::Io {
            path: path.as_ref().display().to_string(),
            source,
        }
    }

    pub(crate) fn corrupt(path: impl AsRef<std::path::Path>, message: impl Into<String>) -> Self {
        Self::Corrupt {
            path: path.as_ref().display().to_string(),
            message: message.into(),
        }
    }
}

fn humantime(d: std::time::Duration) -> String {
    if d.as_millis() % 1000 == 0 {
        format!("{} s", d.as_secs())
    } else {
        format!("{} ms", d.as_millis())
    }
}

/// Result with [`AnalyticsError`].
pub type Result<T, E = AnalyticsError> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_and_environment_errors_are_told_apart() {
        assert!(AnalyticsError::ReadOnly("Insert Into".into()).is_user_error());
        assert!(AnalyticsError::from(DataFusionError::Plan("no table".into())).is_user_error());
        assert!(!AnalyticsError::io("x", std::io::Error::other("disk full")).is_user_error());
        assert!(!AnalyticsError::from(DataFusionError::Execution("oom".into())).is_user_error());
    }
}
