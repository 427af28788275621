//! Errors. [`ViewError::Definition`] and [`ViewError::Evaluation`] are the caller's
//! problem (a ViewDefinition that is not valid, a resource the view cannot be applied to);
//! [`ViewError::Io`] and [`ViewError::Json`] come from the environment around the runner.
//! [`ViewError::is_user_error`] tells the two groups apart.

use thiserror::Error;

/// Why a ViewDefinition was rejected, or a view could not be run.
#[derive(Debug, Error)]
pub enum ViewError {
    /// The ViewDefinition is not valid (checked once, by [`crate::View::compile`]).
    #[error("invalid ViewDefinition at {at}: {message}")]
    Definition {
        /// Where in the ViewDefinition, as a JSON-pointer-like path (`select[0].column[1].path`).
        at: String,
        /// What is wrong.
        message: String,
    },
    /// Running the view on a resource failed (a FHIRPath error, several values in a column
    /// that is not a collection, a `where` that is not boolean).
    #[error("view failed on {resource}: {at}: {message}")]
    Evaluation {
        /// `Type/id` of the resource being processed (or `Type` when it has no id).
        resource: String,
        /// The element of the ViewDefinition being evaluated.
        at: String,
        /// What went wrong.
        message: String,
    },
    /// Reading input or writing output failed.
    #[error("i/o error: {0}")]
    Io(#[from] std::io::Error),
    /// Input that is not JSON, or output that could not be serialized.
    #[error("json error: {0}")]
    Json(#[from] serde_json::Error),
}

impl ViewError {
    pub(crate) fn definition(at: impl Into<String>, message: impl Into<String>) -> Self {
        Self::Definition {
            at: at.into(),
            message: message.into(),
        }
    }

    /// Whether the error is due to what the caller supplied (the ViewDefinition or the
    /// resources) rather than to the environment (I/O).
    pub fn is_user_error(&self) -> bool {
        matches!(
            self,
            Self::Definition { .. } | Self::Evaluation { .. } | Self::Json(_)
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_and_environment_errors_are_told_apart() {
        assert!(ViewError::definition("select", "missing").is_user_error());
        let io = ViewError::from(std::io::Error::other("disk full"));
        assert!(!io.is_user_error());
        assert_eq!(
            ViewError::definition("resource", "missing").to_string(),
            "invalid ViewDefinition at resource: missing"
        );
    }
}
