//! `salus audit verify`: check the audit trail's hash chain (see
//! `salus_service::verify_chain`) and name every record that was edited, inserted or
//! deleted.

use crate::config::Config;
use crate::serve::Backend;
use anyhow::Result;

/// Verify the chain; prints a report and returns whether it is intact.
pub async fn verify_cli(config: &Config, progress: bool) -> Result<bool> {
    let backend = Backend::open(config).await?;
    let store = backend.store();
    let bar = if progress {
        let b = indicatif::ProgressBar::new_spinner();
        b.set_style(
            indicatif::ProgressStyle::with_template(
                "{spinner} [{elapsed_precise}] {pos} audit records read ({per_sec})",
            )
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_spinner()),
        );
        b
    } else {
        indicatif::ProgressBar::hidden()
    };
    let report = salus_service::verify_chain(&store, |n| bar.set_position(n)).await?;
    bar.finish_and_clear();
    if report.problems.is_empty() {
        println!(
            "audit trail intact: {} records, chain head at seq {}",
            report.records, report.head_seq
        );
        return Ok(true);
    }
    println!(
        "AUDIT TRAIL TAMPERED: {} problem(s) in {} records (chain head at seq {}):",
        report.problems.len(),
        report.records,
        report.head_seq
    );
    for p in &report.problems {
        match &p.record {
            Some(r) => println!("  {r}: {}", p.message),
            None => println!("  {}", p.message),
        }
    }
    Ok(false)
}
