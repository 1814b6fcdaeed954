//! The collection catalogue in the cloud (names, vector specs, encryption): publishing definitions (a name known with
//! another spec is refused, all or nothing) and reading them back.

use crate::{Error, PostgresSink, Result};
use hybridsync_core::{CollectionName, CollectionSpec, VectorSpec};
use sqlx::{PgConnection, Row};

const PUBLISH: &str = "INSERT INTO hs_collections (tenant, name, dim, metric, precision, encrypted)
             SELECT current_setting('hybridsync.tenant'), * FROM UNNEST($1::text[], $2::int4[], $3::text[], $4::text[], $5::bool[])
             ON CONFLICT (tenant, name) DO NOTHING";

const SPECS: &str = "SELECT name, dim, metric, precision, encrypted FROM hs_collections
         WHERE tenant = current_setting('hybridsync.tenant') ORDER BY name";

/// The same, as one statement that scopes itself to the tenant (schema version 9).
const CATALOGUE: &str = "SELECT * FROM hs_catalogue($1)";

impl PostgresSink {
    /// Publishes collection specs in one transaction; any name known with another spec
    /// rolls it all back. Returns every definition of this tenant, read in the same
    /// transaction.
    pub(crate) async fn publish_collections(
        &self,
        specs: &[CollectionSpec],
    ) -> Result<Vec<CollectionSpec>> {
        if specs.is_empty() {
            return self.remote_collections().await;
        }
        let (dims, metrics, precisions) = spec_columns(specs);
        let mut tx = self.begin().await?;
        sqlx::query(PUBLISH)
            .persistent(self.persistent)
            .bind(
                specs
                    .iter()
                    .map(|s| s.name.as_str().to_owned())
                    .collect::<Vec<_>>(),
            )
            .bind(dims)
            .bind(metrics)
            .bind(precisions)
            .bind(specs.iter().map(|s| s.encrypted).collect::<Vec<_>>())
            .execute(self.counted(&mut *tx))
            .await?;
        let known = read_specs(self.counted(&mut *tx), self.persistent).await?;
        for spec in specs {
            if let Some(other) = known.iter().find(|k| k.name == spec.name && *k != spec) {
                return Err(Error::SpecConflict {
                    collection: spec.name.to_string(),
                    cloud: describe(other),
                    local: describe(spec),
                });
            }
        }
        self.commit(tx).await?;
        Ok(known)
    }

    /// Every collection definition of this tenant: direct, one statement (and round
    /// trip) of its own; behind PgBouncer, in a transaction that sets its timeouts.
    pub(crate) async fn remote_collections(&self) -> Result<Vec<CollectionSpec>> {
        if self.persistent {
            let mut conn = self.connection().await?;
            let rows = sqlx::query(CATALOGUE)
                .bind(&self.tenant)
                .fetch_all(self.counted(&mut *conn))
                .await?;
            return specs_from_rows(&rows);
        }
        let mut tx = self.begin().await?;
        let specs = read_specs(self.counted(&mut *tx), self.persistent).await?;
        self.commit(tx).await?;
        Ok(specs)
    }
}

type SpecColumns = (Vec<Option<i32>>, Vec<Option<String>>, Vec<Option<String>>);

fn spec_columns(specs: &[CollectionSpec]) -> SpecColumns {
    let vector = |f: &dyn Fn(&VectorSpec) -> String| {
        specs
            .iter()
            .map(|s| s.vector.as_ref().map(f))
            .collect::<Vec<_>>()
    };
    (
        specs
            .iter()
            .map(|s| s.vector.map(|v| v.dim.min(i32::MAX as usize) as i32))
            .collect(),
        vector(&|v| v.metric.as_str().to_owned()),
        vector(&|v| v.precision.as_str().to_owned()),
    )
}

fn describe(spec: &CollectionSpec) -> String {
    let vectors = match &spec.vector {
        None => "no vectors".into(),
        Some(v) => format!("{}-D {} {}", v.dim, v.metric, v.precision),
    };
    if spec.encrypted {
        format!("{vectors}, encrypted")
    } else {
        vectors
    }
}

async fn read_specs(conn: &mut PgConnection, persistent: bool) -> Result<Vec<CollectionSpec>> {
    let rows = sqlx::query(SPECS)
        .persistent(persistent)
        .fetch_all(conn)
        .await?;
    specs_from_rows(&rows)
}

fn specs_from_rows(rows: &[sqlx::postgres::PgRow]) -> Result<Vec<CollectionSpec>> {
    rows.iter()
        .map(|row| {
            let bad = |e: hybridsync_core::Error| Error::BadRow(e.to_string());
            let name = CollectionName::new(row.try_get::<String, _>(0)?).map_err(bad)?;
            let dim: Option<i32> = row.try_get(1)?;
            let metric: Option<String> = row.try_get(2)?;
            let precision: Option<String> = row.try_get(3)?;
            let vector = match (dim, metric, precision) {
                (None, None, None) => None,
                (Some(dim), Some(metric), Some(precision)) => Some(
                    VectorSpec::new(
                        dim.max(0) as usize,
                        metric.parse().map_err(bad)?,
                        precision.parse().map_err(bad)?,
                    )
                    .map_err(bad)?,
                ),
                _ => {
                    return Err(Error::BadRow(format!(
                        "collection {name}: partial vector spec"
                    )));
                }
            };
            Ok(CollectionSpec {
                name,
                vector,
                encrypted: row.try_get(4)?,
            })
        })
        .collect()
}
