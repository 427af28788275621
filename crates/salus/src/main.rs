//! `salus`: the command-line entry point.

use anyhow::Result;
use clap::{Parser, Subcommand};
use salus::config::{Config, Overrides};
use std::path::PathBuf;

// FHIR JSON is allocation-heavy (every number keeps its text, every object its order);
// mimalloc measured markedly faster than the system allocator on import.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "salus",
    version,
    about = "Salus: an open, self-hostable FHIR R4 health-data server"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the FHIR server
    Serve {
        #[command(flatten)]
        overrides: Overrides,
    },
    /// Load FHIR Bundles (.json) and NDJSON files or folders into a data dir or a running server
    Import {
        /// Files or folders to import
        #[arg(required = true)]
        paths: Vec<PathBuf>,
        /// Import into a running server at this base URL instead of a data dir
        #[arg(long, value_name = "URL")]
        server: Option<String>,
        /// Hide the progress bar
        #[arg(long)]
        quiet: bool,
        /// Keep each resource's id, meta.versionId and meta.lastUpdated (Bulk Data
        /// IncrementalLoad; NDJSON files named after their type; versions already stored
        /// are skipped)
        #[arg(long, conflicts_with = "server")]
        incremental: bool,
        #[command(flatten)]
        overrides: Overrides,
    },
    /// Export the data dir as NDJSON files, one set per resource type (Bulk Data $export)
    Export {
        /// Folder to write the files and manifest.json into
        #[arg(long, value_name = "DIR")]
        out: PathBuf,
        /// Only these resource types (repeatable or comma-separated)
        #[arg(long = "type", value_name = "TYPE")]
        types: Vec<String>,
        /// Only resources changed at or after this instant
        #[arg(long, value_name = "INSTANT")]
        since: Option<String>,
        /// Resources as they were at this instant
        #[arg(long, value_name = "INSTANT")]
        until: Option<String>,
        /// A search restricting one type, e.g. 'Observation?category=laboratory' (repeatable)
        #[arg(long = "type-filter", value_name = "TYPE?QUERY")]
        type_filters: Vec<String>,
        /// Only these elements (plus mandatory ones), e.g. Patient.name (repeatable)
        #[arg(long, value_name = "ELEMENT")]
        elements: Vec<String>,
        /// De-identify the output: safe-harbor or a configuration file
        #[arg(long, value_name = "CONFIG|safe-harbor")]
        anonymize: Option<String>,
        /// Hide the progress bar
        #[arg(long)]
        quiet: bool,
        #[command(flatten)]
        overrides: Overrides,
    },
    /// Move a whole store (every version) between an embedded data dir and PostgreSQL,
    /// in either direction, then verify the target against the source
    Migrate {
        /// The store to read: sqlite:DIR (an embedded data dir) or a postgres:// URL
        #[arg(long, value_name = "SRC")]
        from: String,
        /// The store to fill: sqlite:DIR or a postgres:// URL; it must be empty
        #[arg(long, value_name = "DST")]
        to: String,
        /// Continue an interrupted migration into a non-empty target: versions already
        /// there are skipped, and everything is verified
        #[arg(long, conflicts_with = "force_empty")]
        resume: bool,
        /// Erase everything in the target first
        #[arg(long)]
        force_empty: bool,
        /// Hide the progress bar
        #[arg(long)]
        quiet: bool,
        #[command(flatten)]
        overrides: Overrides,
    },
    /// Rebuild the search indexes and full text of every stored resource
    Reindex {
        /// Hide the progress bar
        #[arg(long)]
        quiet: bool,
        #[command(flatten)]
        overrides: Overrides,
    },
    /// Validate resources in files against the R4 definitions without storing them
    Validate {
        #[arg(required = true)]
        paths: Vec<PathBuf>,
    },
    /// De-identify NDJSON files, folders of them, or a Bundle (HIPAA Safe Harbor by default)
    Deid {
        /// An .ndjson file, a folder of them, or a .json Bundle/resource
        input: PathBuf,
        /// Where to write (a folder when the input is one)
        output: PathBuf,
        /// A configuration in the FHIR anonymization tool's format
        #[arg(long, value_name = "FILE")]
        config: Option<PathBuf>,
    },
    /// SQL-on-FHIR v2 views
    View {
        #[command(subcommand)]
        command: ViewCommand,
    },
    /// Convert HL7 v2 messages (ER7 files) into FHIR transaction Bundles without storing them
    Convert {
        /// Files holding one or more messages (each starting with MSH, or separated by blank lines)
        #[arg(required = true)]
        files: Vec<PathBuf>,
        /// Write one Bundle file per message into this folder instead of printing them
        #[arg(long, value_name = "DIR")]
        out: Option<PathBuf>,
        /// TOML configuration file (its [hl7] table sets identifier systems and the default zone)
        #[arg(long, env = "SALUS_CONFIG", value_name = "FILE")]
        config: Option<PathBuf>,
    },
    /// HL7 v2 tools
    Hl7 {
        #[command(subcommand)]
        command: Hl7Command,
    },
    /// The built-in authorization server: clients, users, signing keys
    Auth {
        #[command(subcommand)]
        command: salus::auth::AuthCommand,
    },
    /// Encryption at rest: create, inspect and rotate keys; encrypt existing data
    Keys {
        #[command(subcommand)]
        command: salus::encryption::KeysCommand,
    },
    /// The audit trail
    Audit {
        #[command(subcommand)]
        command: AuditCommand,
    },
    /// Run a read-only SQL query over the analytics tables (refreshed from the data dir first)
    Sql {
        /// The statement, e.g. "SELECT gender, count(*) FROM mx_patient GROUP BY gender"
        query: String,
        /// Output format: table, csv, json, ndjson or parquet
        #[arg(long, default_value = "table")]
        format: String,
        /// Write here instead of standard output
        #[arg(long, value_name = "FILE")]
        out: Option<PathBuf>,
        /// Query the tables as they are, without reading the store's changes first
        #[arg(long)]
        no_refresh: bool,
        #[command(flatten)]
        overrides: Overrides,
    },
    /// The analytics tables (SQL-on-FHIR views materialized as Parquet)
    Analytics {
        #[command(subcommand)]
        command: AnalyticsCommand,
    },
}

#[derive(Subcommand)]
enum AnalyticsCommand {
    /// Bring the tables up to date with the store (incrementally, from its change feed)
    Refresh {
        /// Rebuild every table from scratch
        #[arg(long)]
        full: bool,
        /// Hide the progress indicator
        #[arg(long)]
        quiet: bool,
        #[command(flatten)]
        overrides: Overrides,
    },
}

#[derive(Subcommand)]
enum AuditCommand {
    /// Check the audit trail's hash chain; exits 1 and names every edited, inserted or deleted record
    Verify {
        /// Hide the progress indicator
        #[arg(long)]
        quiet: bool,
        #[command(flatten)]
        overrides: Overrides,
    },
}

#[derive(Subcommand)]
enum Hl7Command {
    /// Send messages over MLLP and print each acknowledgement
    Send {
        /// Files holding one or more messages (each starting with MSH, or separated by blank lines)
        #[arg(required = true)]
        files: Vec<PathBuf>,
        /// The MLLP listener, e.g. 127.0.0.1:2575
        #[arg(long, value_name = "HOST:PORT")]
        to: String,
    },
}

#[derive(Subcommand)]
enum ViewCommand {
    /// Run a ViewDefinition (JSON file) over the data dir or NDJSON files
    Run {
        /// The ViewDefinition
        view: PathBuf,
        /// Output format: csv, ndjson or json
        #[arg(long, default_value = "csv")]
        format: String,
        /// Write here instead of standard output
        #[arg(long, value_name = "FILE")]
        out: Option<PathBuf>,
        /// Run over these NDJSON files instead of the data dir
        #[arg(long = "input", value_name = "NDJSON")]
        inputs: Vec<PathBuf>,
        /// Only resources in this patient's compartment (repeatable)
        #[arg(long, value_name = "ID")]
        patient: Vec<String>,
        /// Only resources changed at or after this instant (e.g. 2026-01-01T00:00:00Z)
        #[arg(long, value_name = "INSTANT")]
        since: Option<String>,
        /// At most this many rows
        #[arg(long)]
        limit: Option<u64>,
        #[command(flatten)]
        overrides: Overrides,
    },
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    match cli.command {
        Command::Serve { overrides } => {
            let config = Config::load(&overrides)?;
            salus::serve::init_tracing(config.log_format);
            runtime.block_on(salus::serve::serve(config))
        }
        Command::Import {
            paths,
            server,
            quiet,
            incremental,
            overrides,
        } => {
            let config = Config::load(&overrides)?;
            salus::serve::init_tracing(config.log_format);
            let ok = if incremental {
                runtime.block_on(salus::bulk::import_incremental_cli(&config, &paths, !quiet))?
            } else {
                runtime.block_on(salus::import::run_cli(&config, &paths, server, !quiet))?
            };
            if !ok {
                std::process::exit(1);
            }
            Ok(())
        }
        Command::Export {
            out,
            types,
            since,
            until,
            type_filters,
            elements,
            anonymize,
            quiet,
            overrides,
        } => {
            let config = Config::load(&overrides)?;
            salus::serve::init_tracing(config.log_format);
            let args = salus::bulk::ExportArgs {
                out,
                types,
                since,
                until,
                type_filters,
                elements,
                anonymize,
                progress: !quiet,
            };
            runtime.block_on(salus::bulk::export_cli(&config, args))
        }
        Command::Migrate {
            from,
            to,
            resume,
            force_empty,
            quiet,
            overrides,
        } => {
            let config = Config::load(&overrides)?;
            salus::serve::init_tracing(config.log_format);
            let args = salus::migrate::MigrateArgs {
                from,
                to,
                resume,
                force_empty,
                progress: !quiet,
            };
            if !runtime.block_on(salus::migrate::run_cli(&config, args))? {
                std::process::exit(1);
            }
            Ok(())
        }
        Command::Reindex { quiet, overrides } => {
            let config = Config::load(&overrides)?;
            salus::serve::init_tracing(config.log_format);
            runtime.block_on(salus::serve::reindex_cli(&config, !quiet))?;
            Ok(())
        }
        Command::Validate { paths } => {
            let ok = salus::import::validate_cli(&paths)?;
            if !ok {
                std::process::exit(1);
            }
            Ok(())
        }
        Command::Deid {
            input,
            output,
            config,
        } => {
            let s = salus::deid::run_cli(&input, &output, config.as_deref())?;
            eprintln!(
                "de-identified {} resources from {} file(s) into {}; {} skipped",
                s.written,
                s.files,
                output.display(),
                s.skipped
            );
            Ok(())
        }
        Command::Convert { files, out, config } => {
            let config = Config::load(&Overrides {
                config,
                ..Default::default()
            })?;
            let ok =
                salus::hl7::convert_cli(&files, out.as_deref(), &config.hl7.convert_options())?;
            if !ok {
                std::process::exit(1);
            }
            Ok(())
        }
        Command::Audit {
            command: AuditCommand::Verify { quiet, overrides },
        } => {
            let config = Config::load(&overrides)?;
            salus::serve::init_tracing(config.log_format);
            if !runtime.block_on(salus::audit::verify_cli(&config, !quiet))? {
                std::process::exit(1);
            }
            Ok(())
        }
        Command::Hl7 {
            command: Hl7Command::Send { files, to },
        } => {
            let ok = runtime.block_on(salus::hl7::send_cli(&files, &to))?;
            if !ok {
                std::process::exit(1);
            }
            Ok(())
        }
        Command::Sql {
            query,
            format,
            out,
            no_refresh,
            overrides,
        } => {
            let config = Config::load(&overrides)?;
            salus::serve::init_tracing(config.log_format);
            let args = salus::analytics::SqlArgs {
                query,
                format,
                out,
                no_refresh,
            };
            runtime.block_on(salus::analytics::sql_cli(&config, args))
        }
        Command::Analytics {
            command:
                AnalyticsCommand::Refresh {
                    full,
                    quiet,
                    overrides,
                },
        } => {
            let config = Config::load(&overrides)?;
            salus::serve::init_tracing(config.log_format);
            runtime.block_on(salus::analytics::refresh_cli(&config, full, !quiet))
        }
        Command::Auth { command } => runtime.block_on(salus::auth::run_cli(command)),
        Command::Keys { command } => {
            salus::serve::init_tracing(salus::config::LogFormat::Text);
            runtime.block_on(salus::encryption::run_cli(command))
        }
        Command::View {
            command:
                ViewCommand::Run {
                    view,
                    format,
                    out,
                    inputs,
                    patient,
                    since,
                    limit,
                    overrides,
                },
        } => {
            let config = Config::load(&overrides)?;
            let since = match since {
                Some(s) => Some(
                    salus_service::time::parse_range(&s)
                        .ok_or_else(|| anyhow::anyhow!("--since '{s}' is not an instant"))?
                        .0,
                ),
                None => None,
            };
            let args = salus::views::RunArgs {
                view,
                format,
                out,
                inputs,
                scope: salus_service::ViewScope {
                    since,
                    patients: patient,
                    limit,
                },
            };
            let rows = runtime.block_on(salus::views::run_cli(&config, args))?;
            eprintln!("{rows} rows");
            Ok(())
        }
    }
}
