use clap::{Parser, Subcommand};

use kube_acme_dns::{api, credentials, import, serve, telemetry};

/// Kubernetes-native ACME-DNS: authoritative DNS for ACME DNS-01 challenges, fed by
/// AcmeDnsAccount custom resources.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the server roles selected by the flags against the current cluster.
    Serve(Box<serve::ServeArgs>),
    /// Print the CustomResourceDefinition YAML generated from the Rust types.
    Crd,
    /// Create an AcmeDnsAccount and credential Secret for each account of an acme-dns
    /// database (SQLite or PostgreSQL), keeping subdomains, usernames and keys.
    ImportAcmeDns(import::ImportArgs),
    /// Make acme-dns API credentials for an AcmeDnsAccount created with kubectl and print
    /// them as `/register` would.
    Credentials(credentials::CredentialsArgs),
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Crd => {
            print!("{}", api::crd_yaml());
            Ok(())
        }
        Command::ImportAcmeDns(args) => import::run(args).await,
        Command::Credentials(args) => credentials::run(args).await,
        Command::Serve(args) => {
            telemetry::init();
            serve::run(*args).await
        }
    }
}
