use clap::{Parser, Subcommand};

use kube_acme_dns::{api, serve, telemetry};

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
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Crd => {
            print!("{}", api::crd_yaml());
            Ok(())
        }
        Command::Serve(args) => {
            telemetry::init();
            serve::run(*args).await
        }
    }
}
