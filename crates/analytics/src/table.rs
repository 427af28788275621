//! [`MaterializedTable`]: a materialized view as a DataFusion [`TableProvider`].
//!
//! The provider knows the table from its manifest: the schema comes from the
//! ViewDefinition (not inferred from files), the row count is exact, and the files read are
//! exactly the parts the manifest lists (never a glob of the directory, which could pick up
//! a half-written part). Reading the Parquet files is delegated to DataFusion's own
//! listing table over that file list, so projection, filter pushdown, row-group pruning and
//! parallel reads come from DataFusion unchanged.

use crate::error::{AnalyticsError, Result};
use crate::materialize::{read_manifest, Manifest};
use crate::schema::view_schema;
use async_trait::async_trait;
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::catalog::{Session, TableProvider};
use datafusion::common::stats::Precision;
use datafusion::common::Statistics;
use datafusion::datasource::file_format::parquet::ParquetFormat;
use datafusion::datasource::listing::{
    ListingOptions, ListingTable, ListingTableConfig, ListingTableUrl,
};
use datafusion::datasource::TableType;
use datafusion::logical_expr::{Expr, TableProviderFilterPushDown};
use datafusion::physical_plan::empty::EmptyExec;
use datafusion::physical_plan::ExecutionPlan;
use salus_views::View;
use std::path::Path;
use std::sync::Arc;

/// A materialized view read through its manifest.
#[derive(Debug)]
pub struct MaterializedTable {
    manifest: Manifest,
    schema: SchemaRef,
    /// `None` when the table has no part (no rows): scans are then empty.
    inner: Option<ListingTable>,
}

impl MaterializedTable {
    /// Open the view stored in `view_dir` (a directory holding `_manifest.json`).
    pub fn open(view_dir: &Path) -> Result<Self> {
        let manifest = read_manifest(view_dir)?;
        let view = View::compile(&manifest.definition)?;
        let schema = view_schema(&view);
        let dir = view_dir
            .canonicalize()
            .map_err(|e| AnalyticsError::io(view_dir, e))?;
        let inner = if manifest.parts.is_empty() {
            None
        } else {
            let mut urls = Vec::with_capacity(manifest.parts.len());
            for p in &manifest.parts {
                let path = dir.join(&p.file);
                let text = path.to_str().ok_or_else(|| {
                    AnalyticsError::Invalid(format!("path {} is not UTF-8", path.display()))
                })?;
                urls.push(ListingTableUrl::parse(text)?);
            }
            let options = ListingOptions::new(Arc::new(ParquetFormat::default()))
                .with_file_extension(".parquet");
            let config = ListingTableConfig::new_with_multi_paths(urls)
                .with_listing_options(options)
                .with_schema(schema.clone());
            Some(ListingTable::try_new(config)?)
        };
        Ok(MaterializedTable {
            manifest,
            schema,
            inner,
        })
    }

    /// The manifest the table was opened with.
    pub fn manifest(&self) -> &Manifest {
        &self.manifest
    }
}

#[async_trait]
impl TableProvider for MaterializedTable {
    fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }

    fn table_type(&self) -> TableType {
        TableType::Base
    }

    async fn scan(
        &self,
        state: &dyn Session,
        projection: Option<&Vec<usize>>,
        filters: &[Expr],
        limit: Option<usize>,
    ) -> datafusion::error::Result<Arc<dyn ExecutionPlan>> {
        match &self.inner {
            Some(t) => t.scan(state, projection, filters, limit).await,
            None => {
                let schema = match projection {
                    Some(p) => Arc::new(self.schema.project(p)?),
                    None => self.schema.clone(),
                };
                Ok(Arc::new(EmptyExec::new(schema)))
            }
        }
    }

    fn supports_filters_pushdown(
        &self,
        filters: &[&Expr],
    ) -> datafusion::error::Result<Vec<TableProviderFilterPushDown>> {
        match &self.inner {
            Some(t) => t.supports_filters_pushdown(filters),
            None => Ok(vec![TableProviderFilterPushDown::Exact; filters.len()]),
        }
    }

    fn statistics(&self) -> Option<Statistics> {
        let mut s = Statistics::new_unknown(&self.schema);
        s.num_rows = Precision::Exact(self.manifest.rows as usize);
        Some(s)
    }
}
