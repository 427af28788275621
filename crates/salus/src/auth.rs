//! `salus auth …`: manage the built-in authorization server's clients, users and signing
//! keys in the data dir (`auth.sqlite`, `auth-keys.json`). Safe to run beside a running
//! server, except that a server picks up rotated keys when it restarts.

use crate::config::{Config, Overrides};
use anyhow::{bail, Context, Result};
use clap::Subcommand;
use salus_auth::admin::{self, NewClient};
use salus_auth::keys::KeyRing;
use salus_auth::sqlite::SqliteAuthStore;
use salus_auth::store::{AuthStore, ClientKind};
use salus_auth::{Clock, SystemClock};
use std::io::BufRead;
use std::path::PathBuf;

#[derive(Subcommand)]
pub enum AuthCommand {
    /// Registered client applications
    Client {
        #[command(subcommand)]
        command: ClientCommand,
    },
    /// Users who can sign in at the login page
    User {
        #[command(subcommand)]
        command: UserCommand,
    },
    /// Token signing keys
    Key {
        #[command(subcommand)]
        command: KeyCommand,
    },
}

#[derive(Subcommand)]
pub enum ClientCommand {
    /// Register a client; prints its client_id (and, for a confidential one, its secret, once)
    Add {
        /// A name shown to users on the consent page
        #[arg(long)]
        name: String,
        /// An exact redirect URI (repeatable)
        #[arg(long = "redirect-uri", value_name = "URI")]
        redirect_uris: Vec<String>,
        /// Allowed scopes, space separated; `*` patterns allowed (e.g. "openid fhirUser launch/patient patient/*.rs")
        #[arg(long)]
        scope: String,
        /// A public app (no secret; PKCE required) [the default]
        #[arg(long, conflicts_with_all = ["confidential", "jwks", "jwks_uri"])]
        public: bool,
        /// A confidential app with a client secret
        #[arg(long, conflicts_with_all = ["jwks", "jwks_uri"])]
        confidential: bool,
        /// A private_key_jwt client (SMART Backend Services) with the public keys in this JWKS file
        #[arg(long, value_name = "FILE", conflicts_with = "jwks_uri")]
        jwks: Option<PathBuf>,
        /// A private_key_jwt client that publishes its keys at this URL
        #[arg(long = "jwks-uri", value_name = "URL")]
        jwks_uri: Option<String>,
        #[command(flatten)]
        overrides: Overrides,
    },
    /// List registered clients
    List {
        #[command(flatten)]
        overrides: Overrides,
    },
    /// Remove a client (its refresh tokens stop working)
    Remove {
        client_id: String,
        #[command(flatten)]
        overrides: Overrides,
    },
}

#[derive(Subcommand)]
pub enum UserCommand {
    /// Add a user
    Add {
        #[arg(long)]
        username: String,
        /// Read the password from the first line of standard input
        #[arg(long, required = true)]
        password_stdin: bool,
        /// The user's FHIR resource: Patient/<id> for patients, Practitioner/<id> for staff
        #[arg(long = "fhir-user", value_name = "REF")]
        fhir_user: Option<String>,
        /// A staff role such as admin, clinician or analyst (repeatable)
        #[arg(long = "role", value_name = "ROLE")]
        roles: Vec<String>,
        #[command(flatten)]
        overrides: Overrides,
    },
    /// List users
    List {
        #[command(flatten)]
        overrides: Overrides,
    },
}

#[derive(Subcommand)]
pub enum KeyCommand {
    /// List the signing keys (the first signs)
    List {
        #[command(flatten)]
        overrides: Overrides,
    },
    /// Add a new signing key; older keys keep verifying until dropped. Restart the server after.
    Rotate {
        #[command(flatten)]
        overrides: Overrides,
    },
    /// Drop an old key: tokens it signed stop verifying. Restart the server after.
    Drop {
        kid: String,
        #[command(flatten)]
        overrides: Overrides,
    },
}

fn data_dir(o: &Overrides) -> Result<PathBuf> {
    Ok(Config::load(o)?.data_dir)
}

fn store(o: &Overrides) -> Result<SqliteAuthStore> {
    let config = Config::load(o)?;
    let dir = config.data_dir.clone();
    let key = crate::encryption::sqlite_keys(&config)?.auth;
    SqliteAuthStore::open_in_with_key(&dir, key.as_ref())
        .with_context(|| format!("cannot open the auth store in {}", dir.display()))
}

fn admin_err(e: admin::AdminError) -> anyhow::Error {
    anyhow::anyhow!("{e}")
}

pub async fn run_cli(command: AuthCommand) -> Result<()> {
    let now = SystemClock.now();
    match command {
        AuthCommand::Client {
            command:
                ClientCommand::Add {
                    name,
                    redirect_uris,
                    scope,
                    public: _,
                    confidential,
                    jwks,
                    jwks_uri,
                    overrides,
                },
        } => {
            let kind = if jwks.is_some() || jwks_uri.is_some() {
                ClientKind::Asymmetric
            } else if confidential {
                ClientKind::Confidential
            } else {
                ClientKind::Public
            };
            let jwks = match jwks {
                Some(p) => {
                    let text = std::fs::read_to_string(&p)
                        .with_context(|| format!("cannot read {}", p.display()))?;
                    Some(
                        serde_json::from_str(&text)
                            .with_context(|| format!("{} is not JSON", p.display()))?,
                    )
                }
                None => None,
            };
            let new = NewClient {
                name,
                kind,
                redirect_uris,
                scope,
                jwks,
                jwks_uri,
            };
            let store = store(&overrides)?;
            let reg = admin::register_client(&store, new, now)
                .await
                .map_err(admin_err)?;
            println!("client_id: {}", reg.client.client_id);
            println!("type: {}", reg.client.kind.as_str());
            if let Some(secret) = reg.secret {
                println!("client_secret: {secret}");
                eprintln!("Store the secret now: it is not shown again.");
            }
            Ok(())
        }
        AuthCommand::Client {
            command: ClientCommand::List { overrides },
        } => {
            let clients = store(&overrides)?.clients().await?;
            if clients.is_empty() {
                eprintln!("no clients registered");
            }
            for c in clients {
                println!(
                    "{}\t{}\t{}\t{}\t{}",
                    c.client_id,
                    c.kind.as_str(),
                    c.name,
                    c.redirect_uris.join(","),
                    c.scope
                );
            }
            Ok(())
        }
        AuthCommand::Client {
            command:
                ClientCommand::Remove {
                    client_id,
                    overrides,
                },
        } => {
            if !store(&overrides)?.delete_client(&client_id).await? {
                bail!("there is no client '{client_id}'");
            }
            eprintln!("removed client {client_id}");
            Ok(())
        }
        AuthCommand::User {
            command:
                UserCommand::Add {
                    username,
                    password_stdin: _,
                    fhir_user,
                    roles,
                    overrides,
                },
        } => {
            let mut password = String::new();
            std::io::stdin()
                .lock()
                .read_line(&mut password)
                .context("cannot read the password from standard input")?;
            let password = password.trim_end_matches(['\r', '\n']);
            let store = store(&overrides)?;
            let user = admin::add_user(
                &store,
                &username,
                password,
                fhir_user.as_deref(),
                &roles,
                now,
            )
            .await
            .map_err(admin_err)?;
            eprintln!(
                "added user {} ({}; roles: {})",
                user.username,
                user.fhir_user.as_deref().unwrap_or("no fhirUser"),
                if user.roles.is_empty() {
                    "none".to_string()
                } else {
                    user.roles.join(", ")
                }
            );
            Ok(())
        }
        AuthCommand::User {
            command: UserCommand::List { overrides },
        } => {
            for u in store(&overrides)?.users().await? {
                println!(
                    "{}\t{}\t{}",
                    u.username,
                    u.fhir_user.as_deref().unwrap_or("-"),
                    u.roles.join(",")
                );
            }
            Ok(())
        }
        AuthCommand::Key { command } => {
            let (overrides, action) = match command {
                KeyCommand::List { overrides } => (overrides, None),
                KeyCommand::Rotate { overrides } => (overrides, Some(None)),
                KeyCommand::Drop { kid, overrides } => (overrides, Some(Some(kid))),
            };
            let dir = data_dir(&overrides)?;
            let mut ring = KeyRing::load_or_create(&dir, now)?;
            match action {
                None => {}
                Some(None) => {
                    let kid = ring.rotate(now)?.kid.clone();
                    eprintln!("new signing key {kid}; restart the server to sign with it");
                }
                Some(Some(kid)) => {
                    ring.drop_key(&kid)?;
                    eprintln!("dropped key {kid}; restart the server to stop accepting it");
                }
            }
            for (i, k) in ring.keys().iter().enumerate() {
                println!(
                    "{}\t{}\t{}",
                    k.kid,
                    k.created_at,
                    if i == 0 { "signing" } else { "verifying" }
                );
            }
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(dir: &std::path::Path) -> Overrides {
        Overrides {
            data_dir: Some(dir.to_path_buf()),
            ..Default::default()
        }
    }

    #[tokio::test]
    async fn clients_and_keys_in_the_data_dir() {
        let dir = tempfile::tempdir().unwrap();
        run_cli(AuthCommand::Client {
            command: ClientCommand::Add {
                name: "App".into(),
                redirect_uris: vec!["https://app.test/cb".into()],
                scope: "openid patient/*.rs".into(),
                public: false,
                confidential: true,
                jwks: None,
                jwks_uri: None,
                overrides: at(dir.path()),
            },
        })
        .await
        .unwrap();
        let clients = SqliteAuthStore::open_in(dir.path())
            .unwrap()
            .clients()
            .await
            .unwrap();
        assert_eq!(clients.len(), 1);
        assert_eq!(clients[0].kind, ClientKind::Confidential);
        assert!(clients[0].secret_hash.is_some());

        // A bad redirect URI is a readable error, and nothing is stored.
        let err = run_cli(AuthCommand::Client {
            command: ClientCommand::Add {
                name: "Bad".into(),
                redirect_uris: vec!["relative/cb".into()],
                scope: "openid".into(),
                public: true,
                confidential: false,
                jwks: None,
                jwks_uri: None,
                overrides: at(dir.path()),
            },
        })
        .await
        .unwrap_err();
        assert!(err.to_string().contains("redirect URI"), "{err}");
        assert_eq!(
            SqliteAuthStore::open_in(dir.path())
                .unwrap()
                .clients()
                .await
                .unwrap()
                .len(),
            1
        );
        let err = run_cli(AuthCommand::Client {
            command: ClientCommand::Remove {
                client_id: "nope".into(),
                overrides: at(dir.path()),
            },
        })
        .await
        .unwrap_err();
        assert!(err.to_string().contains("no client"));

        let key = |command| run_cli(AuthCommand::Key { command });
        key(KeyCommand::Rotate {
            overrides: at(dir.path()),
        })
        .await
        .unwrap();
        let ring = KeyRing::load_or_create(dir.path(), 0).unwrap();
        assert_eq!(ring.keys().len(), 2);
        let old = ring.keys()[1].kid.clone();
        let current = ring.signer().kid.clone();
        assert!(key(KeyCommand::Drop {
            kid: current,
            overrides: at(dir.path())
        })
        .await
        .is_err());
        key(KeyCommand::Drop {
            kid: old,
            overrides: at(dir.path()),
        })
        .await
        .unwrap();
        assert_eq!(
            KeyRing::load_or_create(dir.path(), 0).unwrap().keys().len(),
            1
        );
    }
}
