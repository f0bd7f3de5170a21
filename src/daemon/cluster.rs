//! Joining a cluster at start: the shared queue store, the shared
//! counters and the guard's shared decisions, read before the node serves.

use crate::cluster::PgStore;
use crate::cluster::shared::counters::ClusterCounters;
use crate::cluster::shared::guard::SharedGuard;
use crate::cluster::shared::{SharedClock, SharedSource, SharedSync};
use crate::config::ClusterConfig;
use crate::counters::Counters;
use crate::guard::Guard;
use crate::queue::QueueStore;
use std::path::Path;
use std::sync::Arc;
use tracing::info;

pub struct Cluster {
    pub store: Arc<dyn QueueStore>,
    pub counters: Arc<dyn Counters>,
    pub sync: Arc<SharedSync>,
}

impl Cluster {
    pub async fn join(
        cluster: &ClusterConfig,
        hostname: &str,
        data_dir: &Path,
        guard: &Arc<Guard>,
    ) -> anyhow::Result<Cluster> {
        let store = PgStore::connect(cluster, hostname, data_dir)
            .await
            .map_err(anyhow::Error::msg)?;
        let clock = Arc::new(SharedClock::default());
        let counters = Arc::new(ClusterCounters::new(cluster.node_id, Arc::clone(&clock)));
        let sources: Vec<Arc<dyn SharedSource>> = vec![
            Arc::clone(&counters) as Arc<dyn SharedSource>,
            Arc::new(SharedGuard::new(Arc::clone(guard))),
        ];
        let sync = SharedSync::new(store.pool(), cluster.node_id, clock, sources);
        sync.load().await.map_err(|e| {
            anyhow::anyhow!("cluster.database: cannot read the shared counters and bans: {e}")
        })?;
        info!(
            node = cluster.node_id,
            "the queue, counters, bans and guard decisions are shared in {}",
            cluster.database_shown()
        );
        Ok(Cluster {
            store: Arc::new(store),
            counters,
            sync: Arc::new(sync),
        })
    }
}
