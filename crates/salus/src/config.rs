//! The one typed configuration: defaults → TOML file → `SALUS_*` environment → CLI flags.

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

/// Commit durability of the embedded store.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Durability {
    /// Survives a crash of the process (default).
    #[default]
    Normal,
    /// Also survives an OS crash or power loss (fsync on every commit).
    Full,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StorageConfig {
    pub durability: Durability,
    /// Reader connections kept open.
    pub readers: usize,
    /// Milliseconds to wait on a database lock before answering 503.
    pub busy_timeout_ms: u64,
    /// A PostgreSQL database (`postgres://user@host:5432/db`) instead of the embedded
    /// SQLite one; several `salus serve` processes may share it.
    pub database: Option<String>,
    /// Connections in the PostgreSQL pool.
    pub pool_size: usize,
    /// On PostgreSQL, write large batches of bulk loads (`salus import`, `salus
    /// migrate`) by binary `COPY`; off, they go through the ordinary batched inserts.
    pub bulk_copy: bool,
}

impl Default for StorageConfig {
    fn default() -> Self {
        StorageConfig {
            durability: Durability::Normal,
            readers: 8,
            busy_timeout_ms: 5_000,
            database: None,
            pool_size: 16,
            bulk_copy: true,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LimitsConfig {
    /// `_count` when a client gives none.
    pub default_count: usize,
    /// Largest `_count` honoured.
    pub max_count: usize,
    /// Largest batch/transaction Bundle, in entries.
    pub max_bundle_entries: usize,
    /// Largest request body, in bytes.
    pub max_body_bytes: usize,
    /// Requests per second each client may send (sustained); 0: unlimited.
    pub rate_per_second: f64,
    /// Requests a client may send in a burst above the sustained rate.
    pub rate_burst: u32,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        LimitsConfig {
            default_count: 20,
            max_count: 1000,
            max_bundle_entries: 10_000,
            max_body_bytes: 32 * 1024 * 1024,
            rate_per_second: 0.0,
            rate_burst: 200,
        }
    }
}

/// HL7 v2 intake (`[hl7]` table): the MLLP listener and how v2 values become FHIR ones.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Hl7Config {
    /// Address of the MLLP listener; `None` (the default) runs no listener, so a server
    /// that takes no HL7 v2 feed opens no second port.
    pub mllp_listen: Option<SocketAddr>,
    /// Assigning-authority namespace (CX-4.1) → identifier system URI, e.g. `HOSP` →
    /// `http://hospital.example/mrn`; without an entry identifiers get
    /// `urn:salus:hl7v2:id:<namespace>`, which no other system knows.
    pub namespace_systems: BTreeMap<String, String>,
    /// Zone (`+01:00`, `Z`) for v2 times that carry none (and MSH-7 neither); unset, such
    /// values keep only their date, since a FHIR dateTime with a time needs a zone.
    pub default_offset: Option<String>,
}

impl Hl7Config {
    /// The conversion options these settings give.
    pub fn convert_options(&self) -> salus_hl7v2::ConvertOptions {
        salus_hl7v2::ConvertOptions {
            namespace_systems: self.namespace_systems.clone(),
            default_offset: self.default_offset.clone(),
            ..Default::default()
        }
    }

    fn validate(&self, listen: SocketAddr) -> Result<()> {
        if self.mllp_listen == Some(listen) {
            bail!("hl7.mllp_listen must differ from listen ({listen})");
        }
        if let Some(o) = &self.default_offset {
            let ok = o == "Z"
                || (o.len() == 6
                    && matches!(&o[..1], "+" | "-")
                    && o[1..3].bytes().all(|b| b.is_ascii_digit())
                    && &o[3..4] == ":"
                    && o[4..].bytes().all(|b| b.is_ascii_digit()));
            if !ok {
                bail!("hl7.default_offset must be Z or like +01:00, got '{o}'");
            }
        }
        for (ns, system) in &self.namespace_systems {
            if !system.contains(':') {
                bail!("hl7.namespace_systems.{ns} must be a URI, got '{system}'");
            }
        }
        Ok(())
    }
}

/// Everything `salus serve` needs.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Address to listen on.
    pub listen: SocketAddr,
    /// Directory holding the embedded database.
    pub data_dir: PathBuf,
    /// Load generated demo patients on first start.
    pub demo: bool,
    /// Public base URL; derived from the `Host` header when unset.
    pub base_url: Option<String>,
    pub log_format: LogFormat,
    pub storage: StorageConfig,
    pub limits: LimitsConfig,
    pub hl7: Hl7Config,
    /// Remote patient monitoring (`[devices]`, docs/devices.md); off unless templates are set.
    pub devices: crate::devices::DevicesConfig,
    /// Authorization (`[auth]`, docs/security.md): the built-in SMART authorization server
    /// or an external identity provider. Absent: no authentication, loopback only.
    pub auth: Option<salus_auth::AuthConfig>,
    /// Staff roles and their rules (`[access]`), added to the built-in ones.
    pub access: salus_service::salus_access::AccessConfig,
    /// The audit trail (`[audit]`).
    pub audit: AuditConfig,
    /// HTTPS (`[tls]`): certificate chain and private key, PEM.
    pub tls: Option<TlsConfig>,
    /// Bulk data jobs (`[bulk]`, docs/bulk.md).
    pub bulk: crate::bulk::BulkSettings,
    /// Virtual-visit scheduling (`[scheduling]`, docs/scheduling.md).
    pub scheduling: crate::scheduling::SchedulingSection,
    /// Encryption at rest (`[encryption]`, docs/security.md).
    pub encryption: EncryptionConfig,
    /// FHIR Subscriptions (`[subscriptions]`, docs/subscriptions.md).
    pub subscriptions: crate::subscriptions::SubscriptionsSection,
    /// Analytics tables, `$sql` and the measures (`[analytics]`, docs/analytics.md).
    pub analytics: crate::analytics::AnalyticsSection,
}

/// `[encryption]`: encryption at rest. On SQLite the whole database files
/// (`salus.db`, `auth.sqlite`) are encrypted, indexes included (SQLCipher); on
/// PostgreSQL every resource body and history version (AES-256-GCM). The key named
/// here is the key-encryption key: it wraps the random data keys kept in the keyring
/// (`keyring.json` in the data dir, or the `salus_keyring` table), and is itself
/// never stored by Salus. Only the file's path or the variable's name is configured;
/// the key is never part of the configuration, never logged.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EncryptionConfig {
    pub enabled: bool,
    /// File holding the key: 64 hex digits or base64 of 32 bytes (`salus keys init`
    /// writes one). Keep it off the data dir and out of its backups.
    pub key_file: Option<PathBuf>,
    /// Environment variable holding the key when no `key_file` is set (default
    /// `SALUS_ENCRYPTION_KEY`).
    pub key_env: Option<String>,
}

impl EncryptionConfig {
    /// The variable the key is read from when no file is set.
    pub fn key_env(&self) -> &str {
        self.key_env
            .as_deref()
            .unwrap_or(salus_keys::DEFAULT_KEY_ENV)
    }
}

/// `[audit]`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuditConfig {
    /// Record every access as an AuditEvent. Default: on whenever auth is on.
    pub enabled: Option<bool>,
}

/// `[tls]`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: "127.0.0.1:8080".parse().expect("valid default address"),
            data_dir: PathBuf::from("salus-data"),
            demo: false,
            base_url: None,
            log_format: LogFormat::Text,
            storage: StorageConfig::default(),
            limits: LimitsConfig::default(),
            hl7: Hl7Config::default(),
            devices: Default::default(),
            auth: None,
            access: Default::default(),
            audit: Default::default(),
            tls: None,
            bulk: Default::default(),
            scheduling: Default::default(),
            encryption: Default::default(),
            subscriptions: Default::default(),
            analytics: Default::default(),
        }
    }
}

/// Values given on the command line or in `SALUS_*` variables (clap merges those two,
/// the flag winning); each overrides the file.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct Overrides {
    /// Address and port to listen on [default: 127.0.0.1:8080]
    #[arg(long, env = "SALUS_LISTEN", value_name = "ADDR:PORT")]
    pub listen: Option<SocketAddr>,
    /// Directory for the embedded database [default: ./salus-data]
    #[arg(long, env = "SALUS_DATA_DIR", value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// TOML configuration file
    #[arg(long, env = "SALUS_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Load generated demo patients on first start
    #[arg(long, env = "SALUS_DEMO")]
    pub demo: bool,
    /// Public base URL used in links and Location headers
    #[arg(long, env = "SALUS_BASE_URL", value_name = "URL")]
    pub base_url: Option<String>,
    /// Log format
    #[arg(long, env = "SALUS_LOG_FORMAT", value_enum)]
    pub log_format: Option<LogFormat>,
    /// Commit durability of the embedded store
    #[arg(long, env = "SALUS_DURABILITY", value_enum)]
    pub durability: Option<Durability>,
    /// Largest request body in bytes
    #[arg(long, env = "SALUS_MAX_BODY_BYTES", value_name = "BYTES")]
    pub max_body_bytes: Option<usize>,
    /// PostgreSQL database URL instead of the embedded store (postgres://user@host/db)
    #[arg(long, env = "SALUS_DATABASE", value_name = "URL")]
    pub database: Option<String>,
    /// Also accept HL7 v2 messages over MLLP on this address (off when unset)
    #[arg(long, env = "SALUS_HL7_MLLP_LISTEN", value_name = "ADDR:PORT")]
    pub mllp_listen: Option<SocketAddr>,
    /// Require SMART on FHIR access tokens, from the built-in authorization server (unless
    /// the file's [auth] names an external provider)
    #[arg(long, env = "SALUS_AUTH")]
    pub auth: bool,
    /// TLS certificate chain (PEM); with --tls-key, serve HTTPS
    #[arg(
        long,
        env = "SALUS_TLS_CERT",
        value_name = "FILE",
        requires = "tls_key"
    )]
    pub tls_cert: Option<PathBuf>,
    /// TLS private key (PEM)
    #[arg(
        long,
        env = "SALUS_TLS_KEY",
        value_name = "FILE",
        requires = "tls_cert"
    )]
    pub tls_key: Option<PathBuf>,
    /// Encrypt data at rest (docs/security.md); the key comes from --encryption-key-file
    /// or SALUS_ENCRYPTION_KEY
    #[arg(long, env = "SALUS_ENCRYPTION")]
    pub encryption: bool,
    /// File holding the encryption key (implies --encryption)
    #[arg(long, env = "SALUS_ENCRYPTION_KEY_FILE", value_name = "FILE")]
    pub encryption_key_file: Option<PathBuf>,
    /// Seconds between background refreshes of the analytics tables; 0: on demand only
    #[arg(
        long,
        env = "SALUS_ANALYTICS_REFRESH_INTERVAL_S",
        value_name = "SECONDS"
    )]
    pub analytics_refresh_interval_s: Option<u64>,
}

impl Config {
    /// Read a TOML file.
    pub fn from_file(path: &Path) -> Result<Config> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read configuration file {}", path.display()))?;
        toml::from_str(&text)
            .with_context(|| format!("invalid configuration file {}", path.display()))
    }

    /// Defaults, then the file (if any), then environment and flags.
    pub fn load(o: &Overrides) -> Result<Config> {
        let mut c = match &o.config {
            Some(p) => Config::from_file(p)?,
            None => Config::default(),
        };
        if let Some(v) = o.listen {
            c.listen = v;
        }
        if let Some(v) = &o.data_dir {
            c.data_dir = v.clone();
        }
        if o.demo {
            c.demo = true;
        }
        if let Some(v) = &o.base_url {
            c.base_url = Some(v.clone());
        }
        if let Some(v) = o.log_format {
            c.log_format = v;
        }
        if let Some(v) = o.durability {
            c.storage.durability = v;
        }
        if let Some(v) = o.max_body_bytes {
            c.limits.max_body_bytes = v;
        }
        if let Some(v) = &o.database {
            c.storage.database = Some(v.clone());
        }
        if let Some(v) = o.mllp_listen {
            c.hl7.mllp_listen = Some(v);
        }
        if o.auth && c.auth.is_none() {
            c.auth = Some(Default::default());
        }
        if let (Some(cert), Some(key)) = (&o.tls_cert, &o.tls_key) {
            c.tls = Some(TlsConfig {
                cert_file: cert.clone(),
                key_file: key.clone(),
            });
        }
        if o.encryption {
            c.encryption.enabled = true;
        }
        if let Some(f) = &o.encryption_key_file {
            c.encryption.enabled = true;
            c.encryption.key_file = Some(f.clone());
        }
        if let Some(v) = o.analytics_refresh_interval_s {
            c.analytics.refresh_interval_s = v;
        }
        c.validate()?;
        Ok(c)
    }

    /// Reject settings that cannot work, with a message naming the setting.
    pub fn validate(&self) -> Result<()> {
        self.bulk.validate()?;
        if self.limits.max_count == 0 {
            bail!("limits.max_count must be at least 1");
        }
        if let Some(url) = &self.storage.database {
            if !(url.starts_with("postgres://") || url.starts_with("postgresql://")) {
                bail!("storage.database must be a postgres:// URL (leave it unset for the embedded store)");
            }
            if self.storage.pool_size == 0 {
                bail!("storage.pool_size must be at least 1");
            }
        }
        if self.limits.default_count > self.limits.max_count {
            bail!("limits.default_count must not exceed limits.max_count");
        }
        if self.limits.max_body_bytes < 1024 {
            bail!("limits.max_body_bytes must be at least 1024");
        }
        if self.storage.readers == 0 {
            bail!("storage.readers must be at least 1");
        }
        if let Some(b) = &self.base_url {
            if !(b.starts_with("http://") || b.starts_with("https://")) {
                bail!("base_url must start with http:// or https://, got '{b}'");
            }
        }
        self.hl7.validate(self.listen)?;
        if let Some(a) = &self.auth {
            a.validate().map_err(|e| anyhow::anyhow!(e))?;
        }
        salus_service::salus_access::Policy::from_config(&self.access)
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        if self.limits.rate_per_second < 0.0 || !self.limits.rate_per_second.is_finite() {
            bail!("limits.rate_per_second must be 0 (unlimited) or a positive number");
        }
        if self.audit.enabled == Some(false) && self.auth.is_some() {
            tracing::warn!("audit.enabled = false: accesses to patient data are NOT recorded");
        }
        self.scheduling.validate()?;
        let e = &self.encryption;
        if e.enabled && e.key_file.is_none() && std::env::var_os(e.key_env()).is_none() {
            bail!(
                "encryption is on but no key is configured: set encryption.key_file \
                 (--encryption-key-file) or the environment variable {}",
                e.key_env()
            );
        }
        if !e.enabled && (e.key_file.is_some() || e.key_env.is_some()) {
            bail!("encryption.key_file / key_env are set but encryption.enabled is not: set enabled = true");
        }
        self.subscriptions.validate()?;
        self.analytics.validate()?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_load_and_validate() {
        let c = Config::load(&Overrides::default()).unwrap();
        assert_eq!(c.listen.to_string(), "127.0.0.1:8080");
        assert_eq!(c.data_dir, PathBuf::from("salus-data"));
        assert!(!c.demo);
    }

    #[test]
    fn file_then_flags() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("salus.toml");
        std::fs::write(
            &f,
            "listen = \"127.0.0.1:9999\"\ndemo = true\n[limits]\nmax_count = 50\ndefault_count = 10\n",
        )
        .unwrap();
        let o = Overrides {
            config: Some(f.clone()),
            data_dir: Some("/tmp/x".into()),
            ..Default::default()
        };
        let c = Config::load(&o).unwrap();
        assert_eq!(c.listen.port(), 9999);
        assert!(c.demo);
        assert_eq!(c.limits.max_count, 50);
        assert_eq!(c.data_dir, PathBuf::from("/tmp/x"));
        let o = Overrides {
            config: Some(f),
            listen: Some("127.0.0.1:7000".parse().unwrap()),
            ..Default::default()
        };
        assert_eq!(Config::load(&o).unwrap().listen.port(), 7000);
    }

    #[test]
    fn hl7_defaults_file_env_and_flag() {
        let c = Config::load(&Overrides::default()).unwrap();
        assert_eq!(c.hl7.mllp_listen, None, "no MLLP listener by default");
        assert!(c.hl7.namespace_systems.is_empty());
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("salus.toml");
        std::fs::write(
            &f,
            "[hl7]\nmllp_listen = \"127.0.0.1:2575\"\ndefault_offset = \"+01:00\"\n\
             [hl7.namespace_systems]\nHOSP = \"http://hospital.example/mrn\"\n",
        )
        .unwrap();
        let o = Overrides {
            config: Some(f.clone()),
            ..Default::default()
        };
        let c = Config::load(&o).unwrap();
        assert_eq!(c.hl7.mllp_listen.unwrap().port(), 2575);
        let opts = c.hl7.convert_options();
        assert_eq!(opts.namespace_system("HOSP"), "http://hospital.example/mrn");
        assert_eq!(opts.default_offset.as_deref(), Some("+01:00"));
        // the flag (or SALUS_HL7_MLLP_LISTEN, which clap merges into it) wins
        let o = Overrides {
            config: Some(f),
            mllp_listen: Some("127.0.0.1:2576".parse().unwrap()),
            ..Default::default()
        };
        assert_eq!(
            Config::load(&o).unwrap().hl7.mllp_listen.unwrap().port(),
            2576
        );
    }

    #[test]
    fn bad_hl7_settings_are_readable_errors() {
        let dir = tempfile::tempdir().unwrap();
        let load = |text: &str| {
            let f = dir.path().join("hl7.toml");
            std::fs::write(&f, text).unwrap();
            let o = Overrides {
                config: Some(f),
                ..Default::default()
            };
            format!("{:#}", Config::load(&o).unwrap_err())
        };
        let err = load("[hl7]\nmllp_listen = \"localhost:notaport\"\n");
        assert!(err.contains("invalid configuration file"), "{err}");
        assert!(err.contains("mllp_listen"), "{err}");
        assert!(err.contains("socket address"), "{err}");
        let err = load("[hl7]\nmllp_listen = \"127.0.0.1:8080\"\n");
        assert!(
            err.contains("hl7.mllp_listen must differ from listen"),
            "{err}"
        );
        let err = load("[hl7]\ndefault_offset = \"CET\"\n");
        assert!(err.contains("hl7.default_offset"), "{err}");
        // the flag is parsed by clap, which names it
        let err = <crate::config::tests::Flags as clap::Parser>::try_parse_from([
            "salus",
            "--mllp-listen",
            "nowhere",
        ])
        .err()
        .unwrap()
        .to_string();
        assert!(err.contains("--mllp-listen"), "{err}");
    }

    #[derive(clap::Parser)]
    struct Flags {
        #[command(flatten)]
        overrides: Overrides,
    }

    #[test]
    fn encryption_from_file_and_flags() {
        let c = Config::load(&Overrides::default()).unwrap();
        assert!(!c.encryption.enabled, "off by default");
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("salus.toml");
        std::fs::write(
            &f,
            "[encryption]\nenabled = true\nkey_file = \"/etc/salus/key\"\n",
        )
        .unwrap();
        let o = Overrides {
            config: Some(f.clone()),
            ..Default::default()
        };
        let c = Config::load(&o).unwrap();
        assert!(c.encryption.enabled);
        assert_eq!(c.encryption.key_file, Some(PathBuf::from("/etc/salus/key")));
        let o = Overrides {
            encryption_key_file: Some("k".into()),
            ..Default::default()
        };
        let c = Config::load(&o).unwrap();
        assert!(c.encryption.enabled, "a key file turns it on");
        // on without a key source: refused, naming the settings
        std::fs::write(
            &f,
            "[encryption]\nenabled = true\nkey_env = \"SALUS_TEST_NO_SUCH_KEY_VAR\"\n",
        )
        .unwrap();
        let o = Overrides {
            config: Some(f.clone()),
            ..Default::default()
        };
        let e = format!("{:#}", Config::load(&o).unwrap_err());
        assert!(e.contains("SALUS_TEST_NO_SUCH_KEY_VAR"), "{e}");
        std::fs::write(&f, "[encryption]\nkey_file = \"k\"\n").unwrap();
        let e = format!("{:#}", Config::load(&o).unwrap_err());
        assert!(e.contains("enabled"), "{e}");
    }

    #[test]
    fn analytics_defaults_file_and_flag() {
        let c = Config::load(&Overrides::default()).unwrap();
        assert!(c.analytics.enabled);
        assert_eq!(c.analytics.refresh_interval_s, 300);
        assert!(c.analytics.refresh_on_query);
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("salus.toml");
        std::fs::write(
            &f,
            "[analytics]\nrefresh_interval_s = 60\nrefresh_on_query = false\n",
        )
        .unwrap();
        let o = Overrides {
            config: Some(f.clone()),
            ..Default::default()
        };
        let c = Config::load(&o).unwrap();
        assert_eq!(c.analytics.refresh_interval_s, 60);
        assert!(!c.analytics.refresh_on_query);
        // the flag (or SALUS_ANALYTICS_REFRESH_INTERVAL_S, merged into it by clap) wins
        let o = Overrides {
            config: Some(f.clone()),
            analytics_refresh_interval_s: Some(0),
            ..Default::default()
        };
        assert_eq!(Config::load(&o).unwrap().analytics.refresh_interval_s, 0);
        std::fs::write(&f, "[analytics]\nrefresh_every = 5\n").unwrap();
        let o = Overrides {
            config: Some(f),
            ..Default::default()
        };
        let err = format!("{:#}", Config::load(&o).unwrap_err());
        assert!(err.contains("unknown field"), "{err}");
    }

    #[test]
    fn bad_files_are_reported() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("bad.toml");
        std::fs::write(&f, "listne = 1\n").unwrap();
        let o = Overrides {
            config: Some(f),
            ..Default::default()
        };
        let err = format!("{:#}", Config::load(&o).unwrap_err());
        assert!(err.contains("unknown field"), "{err}");
        let f = dir.path().join("bad2.toml");
        std::fs::write(&f, "[limits]\nmax_count = 0\n").unwrap();
        let o = Overrides {
            config: Some(f),
            ..Default::default()
        };
        assert!(Config::load(&o).is_err());
    }
}
