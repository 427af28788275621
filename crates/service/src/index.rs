//! Index rows extracted from a resource at write time: every R4 SearchParameter of the
//! resource's type (see `salus_search::extract`).

use salus_store::{FullText, IndexRow};
use serde_json::Value;

/// What a version is found by: its index rows and its full text.
pub struct Indexed {
    pub rows: Vec<IndexRow>,
    pub text: FullText,
}

pub fn extract(resource: &Value) -> Indexed {
    Indexed {
        rows: salus_search::extract::extract(resource),
        text: salus_search::fulltext::extract(resource),
    }
}
