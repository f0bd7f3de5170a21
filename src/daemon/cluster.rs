//! Joining a cluster at start: the shared queue store and counters first
//! (delivery needs the counters for its quotas), then, once the guard and
//! the deliverer exist, what else the nodes share, read before the node
//! serves.

use crate::cluster::shared::counters::ClusterCounters;
use crate::cluster::shared::down::SharedDownHosts;
use crate::cluster::shared::guard::SharedGuard;
use crate::cluster::shared::{SharedClock, SharedSource, SharedSync};
use crate::cluster::{JoinError, PgStore};
use crate::config::ClusterConfig;
use crate::counters::Counters;
use crate::delivery::Deliverer;
use crate::guard::Guard;
use crate::queue::QueueStore;
use std::path::Path;
use std::sync::Arc;
use tracing::{info, warn};

pub struct Cluster {
    node: u8,
    store: PgStore,
    clock: Arc<SharedClock>,
    counters: Arc<ClusterCounters>,
}

/// What the daemon keeps of the cluster once it is joined.
pub struct Joined {
    pub store: Arc<dyn QueueStore>,
    pub counters: Arc<dyn Counters>,
    pub sync: Arc<SharedSync>,
}

impl Cluster {
    /// Connects to the database and registers this node. A database that
    /// does not answer yet does not stop the node: it serves, refusing new
    /// mail with 451, until a claim round finds the database (every 10 s).
    pub async fn connect(
        cluster: &ClusterConfig,
        hostname: &str,
        data_dir: &Path,
    ) -> anyhow::Result<Cluster> {
        let store = match PgStore::connect(cluster, hostname, data_dir).await {
            Ok(store) => store,
            Err(JoinError::Refused(e)) => anyhow::bail!(e),
            Err(JoinError::Unreachable(store, e)) => {
                warn!(
                    node = cluster.node_id,
                    "{e}; serving without the cluster: new mail gets 451 until the database answers (tried again every {}s)",
                    crate::queue::CLAIM_EVERY.as_secs()
                );
                *store
            }
        };
        let clock = Arc::new(SharedClock::default());
        let counters = Arc::new(ClusterCounters::new(cluster.node_id, Arc::clone(&clock)));
        info!(
            node = cluster.node_id,
            "the queue, counters, bans, guard decisions and down hosts are shared in {}",
            cluster.database_shown()
        );
        Ok(Cluster {
            node: cluster.node_id,
            store,
            clock,
            counters,
        })
    }

    /// The counters every part of this node counts with (quotas included).
    pub fn counters(&self) -> Arc<dyn Counters> {
        Arc::clone(&self.counters) as Arc<dyn Counters>
    }

    /// Reads what the nodes share into `guard`, `deliverer` and the
    /// counters, and returns what keeps it in step from now on.
    pub async fn share(
        self,
        guard: &Arc<Guard>,
        deliverer: &Arc<Deliverer>,
    ) -> anyhow::Result<Joined> {
        let sources: Vec<Arc<dyn SharedSource>> = vec![
            Arc::clone(&self.counters) as Arc<dyn SharedSource>,
            Arc::new(SharedGuard::new(Arc::clone(guard), self.node)),
            Arc::new(SharedDownHosts::new(Arc::clone(deliverer))),
        ];
        let sync = SharedSync::new(self.store.pool(), self.node, self.clock, sources);
        // Without the database, this node starts with its own state only
        // and reads the others' once the database answers.
        if let Err(e) = sync.load().await {
            warn!("cluster.database: cannot read the shared counters and bans yet: {e}");
        }
        Ok(Joined {
            store: Arc::new(self.store),
            counters: self.counters as Arc<dyn Counters>,
            sync: Arc::new(sync),
        })
    }
}
