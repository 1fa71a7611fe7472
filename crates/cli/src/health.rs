//! `hearth health`: asks a server's standard gRPC health service whether it serves; exit status 0
//! when SERVING, 1 otherwise (usable as a Kubernetes exec probe).

use std::time::Duration;

use clap::Args;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};

#[derive(Args, Debug)]
pub struct HealthArgs {
    /// The server's gRPC address.
    #[arg(long, env = "HEARTH_HEALTH_ADDR", default_value = "http://127.0.0.1:50051")]
    pub addr: String,
    /// The service to ask about; empty for the whole server.
    #[arg(long, default_value = "")]
    pub service: String,
    /// Seconds to wait for an answer.
    #[arg(long, default_value_t = 3.0)]
    pub timeout: f64,
}

pub fn run(args: HealthArgs) -> anyhow::Result<std::process::ExitCode> {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let timeout = Duration::from_secs_f64(args.timeout.max(0.01));
    let status = rt.block_on(async {
        let check = async {
            let channel =
                tonic::transport::Endpoint::from_shared(args.addr.clone())?.connect_timeout(timeout).connect().await?;
            let mut client = HealthClient::new(channel);
            let r = client.check(HealthCheckRequest { service: args.service.clone() }).await?;
            anyhow::Ok(r.into_inner().status())
        };
        tokio::time::timeout(timeout, check).await.map_err(|_| anyhow::anyhow!("no answer within {timeout:?}"))?
    });
    match status {
        Ok(ServingStatus::Serving) => {
            println!("SERVING");
            Ok(std::process::ExitCode::SUCCESS)
        }
        Ok(s) => {
            println!("{}", s.as_str_name());
            Ok(std::process::ExitCode::from(1))
        }
        Err(e) => {
            println!("UNREACHABLE: {e:#}");
            Ok(std::process::ExitCode::from(1))
        }
    }
}
