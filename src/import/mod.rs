//! `kube-acme-dns import-acme-dns`: brings an acme-dns installation's accounts over, so
//! its clients keep their credentials and the CNAMEs already published keep pointing at a
//! served name. Each row of acme-dns's `records` table becomes an AcmeDnsAccount named
//! after its subdomain (as `/register` names them) with the subdomain pinned, and a
//! credential Secret with the same username and bcrypt hash: `record` converts a row,
//! `source` reads the database, `apply` makes the objects exist.
//!
//! Safe to run again: what is already there as the database says is left alone, what
//! differs is reported as a conflict and never overwritten, and a run that failed part
//! way is completed by the next one.

mod apply;
mod record;
mod source;

pub use record::{BadRow, Record, Row, convert};
pub use source::{Source, SourceError};

use std::{io::Write, path::PathBuf};

use anyhow::{Context as _, bail};
use kube::ResourceExt;

use crate::compat::store::credential_secret;

#[derive(clap::Args, Debug)]
#[command(group(clap::ArgGroup::new("database").required(true).args(["sqlite", "postgres"])))]
pub struct ImportArgs {
    /// acme-dns's SQLite database file (its config's [database] connection). Opened
    /// read-only.
    #[arg(long, value_name = "PATH")]
    pub sqlite: Option<PathBuf>,

    /// acme-dns's PostgreSQL database: 'host=… user=… dbname=…' or a postgres:// URL.
    /// Read only. Connects without TLS: use a path you trust (its Unix socket, kubectl
    /// port-forward, an SSH tunnel).
    #[arg(
        long,
        value_name = "CONNECTION",
        env = "KUBE_ACME_DNS_IMPORT_POSTGRES",
        hide_env_values = true
    )]
    pub postgres: Option<String>,

    /// Namespace to create the accounts and their credential Secrets in: the one the
    /// acme-dns API serves (`serve --api-namespace`). Defaults to the kubeconfig
    /// context's namespace, else `default`.
    #[arg(long, short = 'n')]
    pub namespace: Option<String>,

    /// Print the accounts and Secrets as YAML instead of creating them (for `kubectl
    /// apply -f -`). The Secrets carry no owner reference, since the accounts have no uid
    /// yet; running the import afterwards adds it.
    #[arg(long)]
    pub dry_run: bool,
}

impl ImportArgs {
    fn source(&self) -> Source {
        match (&self.sqlite, &self.postgres) {
            (Some(path), _) => Source::Sqlite(path.clone()),
            (None, Some(text)) => Source::Postgres(text.clone()),
            (None, None) => unreachable!("clap requires --sqlite or --postgres"),
        }
    }
}

/// Runs the import; fails (after doing what it can) when any account was not imported.
pub async fn run(args: ImportArgs) -> anyhow::Result<()> {
    let source = args.source();
    let rows = source.rows().await?;
    let mut records = Vec::new();
    let mut bad = Vec::new();
    for (i, row) in rows.iter().enumerate() {
        match convert(i + 1, row) {
            Ok(record) => records.push(record),
            Err(e) => bad.push(e),
        }
    }

    // Dry run output is YAML on stdout; what a person reads goes to stderr there.
    let mut report: Box<dyn Write> = if args.dry_run {
        Box::new(std::io::stderr())
    } else {
        Box::new(std::io::stdout())
    };
    writeln!(
        report,
        "read {} acme-dns accounts from {}",
        rows.len(),
        source.describe()
    )?;
    for row in &bad {
        writeln!(
            report,
            "skipped {row}; fix or delete the row in acme-dns's database and import again"
        )?;
    }

    if args.dry_run {
        let namespace = match args.namespace {
            Some(namespace) => namespace,
            None => kube::Config::infer()
                .await
                .map(|c| c.default_namespace)
                .unwrap_or_else(|_| "default".into()),
        };
        print_manifests(&namespace, &records, &mut report)?;
        if !bad.is_empty() {
            bail!(
                "{} of {} rows cannot be imported (see above)",
                bad.len(),
                rows.len()
            );
        }
        return Ok(());
    }

    let client = crate::kube_client()
        .await
        .context("cannot reach the cluster: check KUBECONFIG and the current context")?;
    let namespace = args
        .namespace
        .clone()
        .unwrap_or_else(|| client.default_namespace().to_string());
    let (changed, unchanged, failed) =
        import_all(&client, &namespace, &records, &mut report).await?;
    writeln!(
        report,
        "imported into namespace {namespace}: {changed} created or completed, {unchanged} \
         unchanged, {failed} failed, {} skipped",
        bad.len()
    )?;
    if changed > 0 {
        writeln!(
            report,
            "the controller now assigns each new account its subdomain: `kubectl get acmedns -n \
             {namespace}` shows READY True for each one served"
        )?;
    }
    if failed + bad.len() > 0 {
        bail!(
            "{} of {} acme-dns accounts were not imported (see above); what was imported stays, \
             and running the import again after fixing the cause completes the rest",
            failed + bad.len(),
            rows.len()
        );
    }
    Ok(())
}

/// `--dry-run`: every account and its Secret as YAML on stdout, notes on `report`.
fn print_manifests(
    namespace: &str,
    records: &[Record],
    report: &mut dyn Write,
) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    for record in records {
        for note in &record.notes {
            writeln!(report, "note: account {}: {note}", record.username)?;
        }
        let account = apply::account(namespace, record);
        let secret = credential_secret(
            namespace,
            &account.name_any(),
            None,
            &record.username,
            &record.key_hash,
        );
        write!(out, "---\n{}", serde_yaml::to_string(&account)?)?;
        write!(out, "---\n{}", serde_yaml::to_string(&secret)?)?;
    }
    writeln!(
        report,
        "dry run: printed {} accounts and their credential Secrets for namespace {namespace}; \
         nothing was created",
        records.len()
    )?;
    Ok(())
}

/// Imports every record, reporting each; returns (changed, unchanged, failed).
async fn import_all(
    client: &kube::Client,
    namespace: &str,
    records: &[Record],
    report: &mut dyn Write,
) -> anyhow::Result<(usize, usize, usize)> {
    let mut existing = apply::existing_accounts(client, namespace).await?;
    let (mut changed, mut unchanged, mut failed) = (0, 0, 0);
    for record in records {
        let who = format!(
            "account {} (subdomain {})",
            record.username, record.subdomain
        );
        for note in &record.notes {
            writeln!(report, "note: {who}: {note}")?;
        }
        let before = existing
            .iter()
            .find(|a| a.spec.subdomain.as_ref().map(|s| s.0.as_str()) == Some(&record.subdomain))
            .map(|a| a.spec.allow_from.clone());
        match apply::import(client, namespace, &mut existing, record).await {
            Ok(outcome) => {
                if outcome.changed() {
                    changed += 1;
                } else {
                    unchanged += 1;
                }
                writeln!(report, "{who}: {outcome}")?;
                if let Some(allow_from) = before.filter(|a| a != &record.allow_from) {
                    let list = |l: &[crate::api::Cidr]| {
                        l.iter().map(|c| c.0.as_str()).collect::<Vec<_>>().join(",")
                    };
                    writeln!(
                        report,
                        "note: {who}: the account's allowFrom [{}] differs from the database's \
                         [{}] and is left as it is; edit the account if the database is right",
                        list(&allow_from),
                        list(&record.allow_from)
                    )?;
                }
            }
            // Every other account would fail the same way.
            Err(e @ apply::ImportError::NoNamespace(_)) => return Err(e.into()),
            Err(e) => {
                failed += 1;
                writeln!(report, "failed {who}: {e}")?;
            }
        }
    }
    Ok((changed, unchanged, failed))
}
