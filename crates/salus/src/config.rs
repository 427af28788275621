//! The one typed configuration: defaults → TOML file → `SALUS_*` environment → CLI flags.

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
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
}

impl Default for StorageConfig {
    fn default() -> Self {
        StorageConfig {
            durability: Durability::Normal,
            readers: 8,
            busy_timeout_ms: 5_000,
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
}

impl Default for LimitsConfig {
    fn default() -> Self {
        LimitsConfig {
            default_count: 20,
            max_count: 1000,
            max_bundle_entries: 10_000,
            max_body_bytes: 32 * 1024 * 1024,
        }
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
        c.validate()?;
        Ok(c)
    }

    /// Reject settings that cannot work, with a message naming the setting.
    pub fn validate(&self) -> Result<()> {
        if self.limits.max_count == 0 {
            bail!("limits.max_count must be at least 1");
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
