//! How a part of the agent that finds it cannot go on (a damaged database) stops the whole
//! agent, saying why: the reason is kept for `run` to print as its one line, and the agent's
//! cancellation token stops every task.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use tokio_util::sync::CancellationToken;

/// A cloneable handle; the first reason raised is the one reported.
#[derive(Debug, Clone)]
pub struct Fatal {
    reason: Arc<Mutex<Option<String>>>,
    cancel: CancellationToken,
    /// The database file, named in the reasons about it.
    database: Arc<PathBuf>,
}

impl Fatal {
    pub fn new(cancel: CancellationToken, database: PathBuf) -> Self {
        Fatal {
            reason: Arc::new(Mutex::new(None)),
            cancel,
            database: Arc::new(database),
        }
    }

    /// Stops the agent because of `reason` (logged here, printed by `run`).
    pub fn raise(&self, reason: String) {
        tracing::error!(%reason, "the agent cannot go on");
        if let Ok(mut slot) = self.reason.lock() {
            slot.get_or_insert(reason);
        }
        self.cancel.cancel();
    }

    /// Stops the agent because its database cannot be written (a full disk): `why` says how.
    pub fn unwritable(&self, why: &str) {
        self.raise(format!("{}: {why}", self.database.display()));
    }

    /// Stops the agent because its database is damaged (`what` was found), with the way out.
    pub fn damaged(&self, what: &str) {
        self.raise(format!(
            "{} is damaged ({what}); recover with `pinmesh run --resync`, which keeps the \
             damaged file aside and rejoins the cluster from its peers",
            self.database.display()
        ));
    }

    /// The first reason raised, if any.
    pub fn reason(&self) -> Option<String> {
        self.reason.lock().ok().and_then(|r| r.clone())
    }
}
