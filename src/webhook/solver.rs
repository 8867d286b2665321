//! What Present and CleanUp do: find the account a challenge belongs to, and add or
//! remove exactly its key in the account's `status.txt`.

use tracing::{debug, info};

use super::resolver::{AccountResolver, ResolveError};
use crate::{
    apiserver::{ChallengeSolver, payload::Challenge},
    index::AccountKey,
    txt::{TxtError, TxtWriter},
};

#[derive(Debug, thiserror::Error)]
pub enum SolverError {
    #[error(transparent)]
    Resolve(#[from] ResolveError),
    #[error(
        "the challenge has no key; cert-manager always sends one, so this caller is not cert-manager"
    )]
    NoKey,
    #[error(transparent)]
    Txt(#[from] TxtError),
}

/// The acme-dns solver: TXT values live in the account's status.
pub struct Solver {
    pub txt: TxtWriter,
    pub resolver: AccountResolver,
}

impl ChallengeSolver for Solver {
    type Error = SolverError;

    /// Adds the key to the account's TXT values; nothing changes if it is there already.
    async fn present(&self, challenge: &Challenge) -> Result<(), SolverError> {
        // Logged before any work, so its time is when the Present arrived (`make
        // bench-issuance` measures from it to the first answer with the value).
        debug!(domain = %challenge.dns_name, "Present received");
        let account = self.account_for(challenge)?;
        self.txt.add(&account, &challenge.key).await?;
        info!(%account, domain = %challenge.dns_name, "presented a TXT value");
        Ok(())
    }

    /// Removes exactly this key, leaving every other value in place.
    async fn clean_up(&self, challenge: &Challenge) -> Result<(), SolverError> {
        let account = self.account_for(challenge)?;
        self.txt.remove(&account, &challenge.key).await?;
        info!(%account, domain = %challenge.dns_name, "cleaned up a TXT value");
        Ok(())
    }
}

impl Solver {
    fn account_for(&self, challenge: &Challenge) -> Result<AccountKey, SolverError> {
        if challenge.key.is_empty() {
            return Err(SolverError::NoKey);
        }
        Ok(self.resolver.resolve(challenge)?)
    }
}
