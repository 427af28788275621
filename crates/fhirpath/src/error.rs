//! Error types: [`ParseError`] for syntax problems found while compiling an expression and
//! [`EvalError`] for problems found while evaluating one (wrong operand types, a collection
//! where a single value is required, unknown functions or variables, ...).
//!
//! Neither carries internal details that could leak data: messages name the construct and,
//! for parse errors, the byte offset in the source expression.

use thiserror::Error;

/// A syntax (or static semantic) error in an expression, with the byte offset where it was
/// found.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("{message} (at offset {position})")]
pub struct ParseError {
    /// What is wrong, e.g. `expected ')'`.
    pub message: String,
    /// Byte offset into the source expression.
    pub position: usize,
}

impl ParseError {
    pub(crate) fn new(message: impl Into<String>, position: usize) -> Self {
        Self {
            message: message.into(),
            position,
        }
    }
}

/// An error raised while evaluating an expression.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum EvalError {
    /// An operator or function got an operand of a type it does not accept
    /// (`1 + 'a'`, `(1|2).not()` on a non-boolean, ...).
    #[error("type error: {0}")]
    Type(String),
    /// A single value was required but the collection had several items.
    #[error("expected a single item, got {count} ({context})")]
    NotSingleton {
        /// Where the single value was required.
        context: String,
        /// How many items there were.
        count: usize,
    },
    /// A function was called with the wrong number of arguments or an unusable argument.
    #[error("invalid argument: {0}")]
    Argument(String),
    /// No built-in or custom function of that name.
    #[error("unknown function '{0}'")]
    UnknownFunction(String),
    /// No environment variable of that name.
    #[error("unknown variable '%{0}'")]
    UnknownVariable(String),
    /// In strict mode: an element name that the FHIR definitions do not define for the type
    /// being navigated (`Patient.name.given1`), or a type name used as a path that does not
    /// match the context (`Encounter.name` on a Patient).
    #[error("'{name}' is not an element of {type_name}")]
    UnknownElement {
        /// The type being navigated.
        type_name: String,
        /// The name that was not found.
        name: String,
    },
    /// A regular expression argument did not compile.
    #[error("invalid regular expression: {0}")]
    Regex(String),
    /// Raised by a caller-supplied function, resolver or terminology hook.
    #[error("{0}")]
    Custom(String),
}

impl EvalError {
    pub(crate) fn not_singleton(context: impl Into<String>, count: usize) -> Self {
        Self::NotSingleton {
            context: context.into(),
            count,
        }
    }

    pub(crate) fn type_err(msg: impl Into<String>) -> Self {
        Self::Type(msg.into())
    }

    pub(crate) fn arg(msg: impl Into<String>) -> Self {
        Self::Argument(msg.into())
    }
}

/// Either kind of error, for [`crate::evaluate`] which parses and evaluates in one call.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum Error {
    #[error(transparent)]
    Parse(#[from] ParseError),
    #[error(transparent)]
    Eval(#[from] EvalError),
}
