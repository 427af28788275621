//! Index rows extracted from a resource at write time: every R4 SearchParameter of the
//! resource's type (see `salus_search::extract`).

use salus_store::IndexRow;
use serde_json::Value;

pub fn extract(resource: &Value) -> Vec<IndexRow> {
    salus_search::extract::extract(resource)
}
