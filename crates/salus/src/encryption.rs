//! Encryption at rest (docs/security.md): the key-encryption key `[encryption]` names,
//! the data keys of the embedded store's files (`keyring.json` in the data dir), and
//! `salus keys` (init, status, encrypt, rotate, prune).

use crate::config::{Config, Overrides};
use anyhow::{bail, Context, Result};
use clap::Subcommand;
use salus_keys::sqlcipher::{self, FileState};
use salus_keys::{Cipher, DataKey, KeyEncryptionKey, Keyring, LocalKek};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// The keyring of the embedded store, beside its database files.
pub const KEYRING_FILE: &str = "keyring.json";

/// The embedded store's database files, each encrypted under the keyring's data key.
const DB_FILES: &[&str] = &["salus.db", salus_auth::sqlite::DB_FILE];

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// The key-encryption key from a file or an environment variable. A file others may
/// read, or one inside the data dir (it would travel with the data it protects), is
/// warned about.
pub fn load_kek(
    file: Option<&Path>,
    env: &str,
    data_dir: Option<&Path>,
) -> Result<Arc<dyn KeyEncryptionKey>> {
    let kek = match file {
        Some(path) => {
            let (kek, warning) = LocalKek::from_file(path)?;
            if let Some(w) = warning {
                tracing::warn!("{w}");
            }
            if let (Some(dir), Ok(abs)) = (data_dir, std::fs::canonicalize(path)) {
                if std::fs::canonicalize(dir).is_ok_and(|d| abs.starts_with(d)) {
                    tracing::warn!(
                        key_file = %path.display(),
                        "the encryption key file is inside the data directory: a copy of the \
                         directory (a backup, a stolen disk) then carries the key with the data"
                    );
                }
            }
            kek
        }
        None => LocalKek::from_env(env)?,
    };
    Ok(Arc::new(kek))
}

/// The configured key-encryption key, when encryption is on.
pub fn kek(config: &Config) -> Result<Option<Arc<dyn KeyEncryptionKey>>> {
    let e = &config.encryption;
    if !e.enabled {
        return Ok(None);
    }
    load_kek(e.key_file.as_deref(), e.key_env(), Some(&config.data_dir)).map(Some)
}

fn keyring_path(config: &Config) -> PathBuf {
    config.data_dir.join(KEYRING_FILE)
}

/// The data key that opens each database file of the embedded store.
#[derive(Debug, Default)]
pub struct SqliteKeys {
    /// `salus.db`.
    pub store: Option<DataKey>,
    /// `auth.sqlite`.
    pub auth: Option<DataKey>,
}

/// The data keys of the embedded store's files, when encryption is on; the keyring is
/// created with the first data key when neither it nor the database exists yet.
pub fn sqlite_keys(config: &Config) -> Result<SqliteKeys> {
    let Some(kek) = kek(config)? else {
        return Ok(SqliteKeys::default());
    };
    let path = keyring_path(config);
    let store_db = config.data_dir.join(DB_FILES[0]);
    let ring = match Keyring::load(&path)? {
        Some(r) => r,
        None => {
            match sqlcipher::file_state(&store_db)? {
                FileState::Encrypted => bail!(
                    "{} is encrypted but {} is missing: the data key is lost with it; restore \
                     {KEYRING_FILE} from the backup of this data dir",
                    store_db.display(),
                    path.display()
                ),
                // opening refuses it with the way to encrypt it
                FileState::Plain => {
                    return Err(sqlcipher::DbKeyError::NotEncrypted(store_db).into())
                }
                FileState::Missing => {}
            }
            std::fs::create_dir_all(&config.data_dir)
                .with_context(|| format!("cannot create {}", config.data_dir.display()))?;
            let ring = Keyring::create(kek.as_ref(), now())?;
            ring.save(&path)?;
            tracing::info!(
                kek = %ring.kek_id,
                "encryption on: created the data key of this data dir in {}",
                path.display()
            );
            ring
        }
    };
    let cipher = ring
        .unlock(kek.as_ref(), None)
        .with_context(|| format!("cannot unlock {}", path.display()))?;
    Ok(SqliteKeys {
        store: Some(key_for(&store_db, &cipher)?),
        auth: Some(key_for(&config.data_dir.join(DB_FILES[1]), &cipher)?),
    })
}

/// The data key that opens `path`: the active one, or (after an interrupted data key
/// rotation) another key of the keyring.
fn key_for(path: &Path, cipher: &Cipher) -> Result<DataKey> {
    let active = cipher.active_key().clone();
    if sqlcipher::file_state(path)? != FileState::Encrypted {
        return Ok(active);
    }
    let ids = cipher.ids();
    let mut order: Vec<u32> = vec![cipher.active_id()];
    order.extend(ids.iter().copied().filter(|i| *i != cipher.active_id()));
    let keys: Vec<&DataKey> = order.iter().filter_map(|i| cipher.key(*i)).collect();
    match sqlcipher::probe(path, &keys)? {
        Some(0) => Ok(active),
        Some(i) => {
            tracing::warn!(
                file = %path.display(),
                data_key = order[i],
                "this file is still under an older data key (a rotation was interrupted): \
                 run `salus keys rotate --data-key` again with the server stopped"
            );
            Ok(keys[i].clone())
        }
        None => bail!(
            "wrong encryption key for the database {}: no data key of {KEYRING_FILE} opens it",
            path.display()
        ),
    }
}

#[derive(Subcommand)]
pub enum KeysCommand {
    /// Write a new random key-encryption key to a file (mode 0600); configure it as
    /// encryption.key_file
    Init {
        /// Where to write it (refuses to overwrite); keep it off the data dir
        #[arg(long, value_name = "FILE")]
        out: PathBuf,
    },
    /// Show the key ids, the data keys, and which key each database file or stored
    /// version is under
    Status {
        #[command(flatten)]
        overrides: Overrides,
    },
    /// Encrypt data stored before encryption was turned on (SQLite: with the server
    /// stopped; PostgreSQL: while it runs)
    Encrypt {
        /// Hide the progress bar
        #[arg(long)]
        quiet: bool,
        #[command(flatten)]
        overrides: Overrides,
    },
    /// Rotate keys: a new key-encryption key (--new-key-file or --new-key-env; while
    /// servers run), or a new data key for the data itself (--data-key; PostgreSQL
    /// while servers run, SQLite with the server stopped)
    #[command(group(clap::ArgGroup::new("what").required(true).args(["new_key_file", "new_key_env", "data_key"])))]
    Rotate {
        /// The new key-encryption key, in a file (`salus keys init` writes one)
        #[arg(long, value_name = "FILE", conflicts_with_all = ["new_key_env", "data_key"])]
        new_key_file: Option<PathBuf>,
        /// The new key-encryption key, in this environment variable
        #[arg(long, value_name = "VAR", conflicts_with = "data_key")]
        new_key_env: Option<String>,
        /// A new data key: the stored data is re-encrypted under it
        #[arg(long)]
        data_key: bool,
        /// Hide the progress bar
        #[arg(long)]
        quiet: bool,
        #[command(flatten)]
        overrides: Overrides,
    },
    /// Remove retired data keys that no stored version uses any more (PostgreSQL;
    /// writes wait while it checks)
    Prune {
        #[command(flatten)]
        overrides: Overrides,
    },
}

fn require_kek(config: &Config) -> Result<Arc<dyn KeyEncryptionKey>> {
    kek(config)?.ok_or_else(|| {
        anyhow::anyhow!(
            "encryption is not on: set [encryption] enabled = true with key_file (or \
             --encryption-key-file, or SALUS_ENCRYPTION_KEY)"
        )
    })
}

async fn pg(config: &Config, kek: Arc<dyn KeyEncryptionKey>) -> Result<salus_store_pg::PgStore> {
    let url = config
        .storage
        .database
        .as_deref()
        .context("no PostgreSQL database configured")?;
    salus_store_pg::PgStore::connect(
        url,
        salus_store_pg::PgOptions {
            pool_size: 2,
            encryption: Some(kek),
            application_name: "salus keys".into(),
            ..Default::default()
        },
    )
    .await
    .map_err(|e| anyhow::anyhow!("cannot open the PostgreSQL database: {e}"))
}

fn bar(progress: bool, what: &str) -> indicatif::ProgressBar {
    if !progress {
        return indicatif::ProgressBar::hidden();
    }
    let b = indicatif::ProgressBar::new(0);
    b.set_style(
        indicatif::ProgressStyle::with_template(&format!(
            "{{spinner}} [{{elapsed_precise}}] {{bar:40}} {{pos}}/{{len}} {what} ({{per_sec}})"
        ))
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    b
}

async fn reencrypt(store: &salus_store_pg::PgStore, progress: bool) -> Result<u64> {
    let b = bar(progress, "versions re-encrypted");
    let n = store
        .reencrypt(&mut |done, total| {
            b.set_length(total);
            b.set_position(done);
        })
        .await?;
    b.finish_and_clear();
    Ok(n)
}

fn describe(ring: &Keyring) {
    println!("keyring wrapped by key {}", ring.kek_id);
    for k in &ring.keys {
        println!(
            "  data key {}: created {}, {}",
            k.id,
            time::OffsetDateTime::from_unix_timestamp(k.created_at)
                .ok()
                .and_then(|t| t
                    .format(&time::format_description::well_known::Rfc3339)
                    .ok())
                .unwrap_or_else(|| k.created_at.to_string()),
            if k.retired {
                "retired (decrypts only)"
            } else {
                "active"
            }
        );
    }
}

pub async fn run_cli(command: KeysCommand) -> Result<()> {
    match command {
        KeysCommand::Init { out } => init(&out),
        KeysCommand::Status { overrides } => status(&Config::load(&overrides)?).await,
        KeysCommand::Encrypt { quiet, overrides } => {
            encrypt(&Config::load(&overrides)?, !quiet).await
        }
        KeysCommand::Rotate {
            new_key_file,
            new_key_env,
            data_key,
            quiet,
            overrides,
        } => {
            let config = Config::load(&overrides)?;
            if data_key {
                rotate_data_key(&config, !quiet).await
            } else {
                let new = load_kek(
                    new_key_file.as_deref(),
                    new_key_env.as_deref().unwrap_or_default(),
                    Some(&config.data_dir),
                )?;
                rotate_kek(&config, new).await
            }
        }
        KeysCommand::Prune { overrides } => {
            let config = Config::load(&overrides)?;
            let kek = require_kek(&config)?;
            if config.storage.database.is_none() {
                println!("nothing to prune: on SQLite `salus keys rotate --data-key` removes the old data key itself");
                return Ok(());
            }
            let store = pg(&config, kek).await?;
            let removed = store.prune_data_keys().await?;
            println!(
                "removed {} unused retired data key(s): {removed:?}",
                removed.len()
            );
            Ok(())
        }
    }
}

fn init(out: &Path) -> Result<()> {
    use std::io::Write;
    let text = salus_keys::generate_key_text();
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    let mut f = opts.open(out).map_err(|e| {
        if e.kind() == std::io::ErrorKind::AlreadyExists {
            anyhow::anyhow!(
                "{} exists: not overwritten (a key replaced is data lost)",
                out.display()
            )
        } else {
            anyhow::anyhow!("cannot create {}: {e}", out.display())
        }
    })?;
    f.write_all(text.as_bytes())
        .and_then(|()| f.sync_all())
        .with_context(|| format!("cannot write {}", out.display()))?;
    let kek = LocalKek::from_text(&text, "the new key")?;
    println!(
        "wrote a new encryption key to {} (key id {}).\n\
         Keep it off the data dir and back it up separately: without it the data cannot be read.",
        out.display(),
        kek.id()
    );
    Ok(())
}

async fn status(config: &Config) -> Result<()> {
    let kek = require_kek(config)?;
    println!("configured key: {}", kek.id());
    if config.storage.database.is_some() {
        let store = pg(config, kek).await?;
        if let Some(ring) = store.keyring().await? {
            describe(&ring);
        }
        println!("stored versions by data key:");
        for (id, n) in store.data_key_usage().await? {
            match id {
                Some(id) => println!("  data key {id}: {n}"),
                None => println!("  NOT ENCRYPTED (stored before encryption was on; run `salus keys encrypt`): {n}"),
            }
        }
        return Ok(());
    }
    let path = keyring_path(config);
    let Some(ring) = Keyring::load(&path)? else {
        println!(
            "no keyring in {} yet (created on the first start)",
            config.data_dir.display()
        );
        return Ok(());
    };
    describe(&ring);
    let cipher = ring.unlock(kek.as_ref(), None)?;
    for name in DB_FILES {
        let p = config.data_dir.join(name);
        let state = match sqlcipher::file_state(&p)? {
            FileState::Missing => "not created yet".to_string(),
            FileState::Plain => {
                "NOT ENCRYPTED (run `salus keys encrypt` with the server stopped)".to_string()
            }
            FileState::Encrypted => {
                let ids = cipher.ids();
                let keys: Vec<&DataKey> = ids.iter().filter_map(|i| cipher.key(*i)).collect();
                match sqlcipher::probe(&p, &keys)? {
                    Some(i) => format!("encrypted under data key {}", ids[i]),
                    None => "encrypted under a key this keyring does not hold".to_string(),
                }
            }
        };
        println!("{name}: {state}");
    }
    Ok(())
}

async fn encrypt(config: &Config, progress: bool) -> Result<()> {
    let kek = require_kek(config)?;
    if config.storage.database.is_some() {
        let store = pg(config, kek).await?;
        let n = reencrypt(&store, progress).await?;
        println!(
            "encrypted {n} stored version(s); every body is now under data key {}",
            store
                .keyring()
                .await?
                .and_then(|r| r.active_id())
                .unwrap_or(0)
        );
        return Ok(());
    }
    // refuse before anything changes when the server still has the files open
    for name in DB_FILES {
        let p = config.data_dir.join(name);
        if sqlcipher::file_state(&p)? == FileState::Plain {
            sqlcipher::ensure_unused(&p, None)?;
        }
    }
    let path = keyring_path(config);
    let ring = match Keyring::load(&path)? {
        Some(r) => r,
        None => {
            let r = Keyring::create(kek.as_ref(), now())?;
            std::fs::create_dir_all(&config.data_dir)
                .with_context(|| format!("cannot create {}", config.data_dir.display()))?;
            r.save(&path)?;
            r
        }
    };
    let cipher = ring.unlock(kek.as_ref(), None)?;
    for name in DB_FILES {
        let p = config.data_dir.join(name);
        if sqlcipher::encrypt_file(&p, cipher.active_key())? {
            println!("encrypted {}", p.display());
        } else {
            println!(
                "{}: nothing to do (already encrypted, or absent)",
                p.display()
            );
        }
    }
    println!(
        "The plaintext files were replaced; copies in older backups, snapshots or free disk \
         blocks are not: see docs/security.md."
    );
    Ok(())
}

async fn rotate_kek(config: &Config, new: Arc<dyn KeyEncryptionKey>) -> Result<()> {
    let old = require_kek(config)?;
    if old.id() == new.id() {
        bail!("the new key is the configured key ({})", old.id());
    }
    let n = if config.storage.database.is_some() {
        pg(config, old).await?.rewrap_keyring(new.as_ref()).await?
    } else {
        let path = keyring_path(config);
        let ring = Keyring::load(&path)?
            .with_context(|| format!("no keyring at {}: nothing to rotate", path.display()))?;
        let rewrapped = ring.rewrap(old.as_ref(), new.as_ref())?;
        rewrapped.save(&path)?;
        rewrapped.keys.len()
    };
    println!(
        "rewrapped {n} data key(s) under key {}. Running servers keep working; configure the \
         new key (encryption.key_file) before their next start: the old key no longer opens \
         this data. Keep the old key as long as backups taken before now are kept (their \
         keyring is wrapped by it).",
        new.id()
    );
    Ok(())
}

async fn rotate_data_key(config: &Config, progress: bool) -> Result<()> {
    let kek = require_kek(config)?;
    if config.storage.database.is_some() {
        let store = pg(config, kek).await?;
        let id = store.add_data_key().await?;
        // running servers pick it up at their next keyring refresh; only then are the
        // old keys retired, so none of their writes is refused
        let wait = salus_store_pg::KEYRING_REFRESH + std::time::Duration::from_secs(2);
        println!(
            "data key {id} added; waiting {}s for running servers to start using it",
            wait.as_secs()
        );
        tokio::time::sleep(wait).await;
        store.retire_old_data_keys().await?;
        let n = reencrypt(&store, progress).await?;
        println!(
            "re-encrypted {n} stored version(s) under data key {id}; the old data keys are \
             retired (they decrypt only) — `salus keys prune` removes them"
        );
        return Ok(());
    }
    // SQLite: PRAGMA rekey rewrites every page and needs the files to itself
    let path = keyring_path(config);
    let mut ring = Keyring::load(&path)?
        .with_context(|| format!("no keyring at {}: nothing to rotate", path.display()))?;
    let old = ring.unlock(kek.as_ref(), None)?;
    let old_ids = old.ids();
    // refuse before the keyring changes when the server still has the files open
    for name in DB_FILES {
        let p = config.data_dir.join(name);
        if sqlcipher::file_state(&p)? == FileState::Encrypted {
            sqlcipher::ensure_unused(&p, Some(&key_for(&p, &old)?))?;
        }
    }
    let id = ring.add_data_key(kek.as_ref(), now())?;
    // the keyring holds the new key before any file is under it: an interruption
    // leaves every file openable
    ring.save(&path)?;
    let cipher = ring.unlock(kek.as_ref(), Some(&old))?;
    let new = cipher.active_key();
    for name in DB_FILES {
        let p = config.data_dir.join(name);
        if sqlcipher::file_state(&p)? != FileState::Encrypted {
            continue;
        }
        // a file is under one of the keys held before this rotation
        let current = key_for(&p, &old)?;
        sqlcipher::rekey_file(&p, &current, new)?;
        println!("re-encrypted {} under data key {id}", p.display());
    }
    ring.remove(&old_ids);
    ring.save(&path)?;
    println!(
        "data key {id} is now the only data key of {}",
        config.data_dir.display()
    );
    Ok(())
}
