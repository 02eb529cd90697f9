//! `owsyncctl cluster add-role CLUSTER --password-file F` (admin): the login role of one
//! host cluster (`store::roles`). Prints the role's name alone on stdout, so a script can
//! take it (`ROLE=$(owsyncctl cluster add-role ...)`); what was done goes to stderr. The
//! password comes only from a file and is sent to the server as a SCRAM verifier.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Args;

use super::cluster::AdminUrl;
use super::common::{CliError, read_secret};
use crate::store::{self, roles};

#[derive(Debug, Args)]
pub struct AddRoleArgs {
    /// The cluster the role is bound to (its hosts' OWSYNC_CLUSTER).
    pub cluster: String,
    /// File holding the role's password (set again when the role exists: a rotation).
    #[arg(long)]
    pub password_file: PathBuf,
    #[command(flatten)]
    pub admin: AdminUrl,
}

pub async fn add_role(a: AddRoleArgs) -> Result<ExitCode, CliError> {
    let password = read_secret(&a.password_file)?;
    let pool = a.admin.pool().await?;
    let added = match roles::add_role(&pool, &a.cluster, &password).await {
        Ok(r) => r,
        Err(e @ store::StoreError::Invalid(_)) => {
            eprintln!("error: {e}");
            return Ok(ExitCode::from(1));
        }
        Err(e) => return Err(e.into()),
    };
    let what = match (added.created, added.bound) {
        (true, _) => "created",
        (false, true) => "bound",
        (false, false) => "password set",
    };
    eprintln!(
        "role/{} {what}: bound to cluster {}, {} mirror schema(s) granted; connect the cluster's owsyncd as this role \
         (docs/security.md)",
        added.role, a.cluster, added.mirrors
    );
    println!("{}", added.role);
    Ok(ExitCode::SUCCESS)
}
