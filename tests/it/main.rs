//! One integration-test binary (each file under tests/ would link the library again).

mod alerts;
mod dkim;
mod settings;
mod support;
mod tls_policy;
mod webhooks;

mod admin;
mod archive;
mod browser;
mod checks;
mod cli;
mod clients;
mod cluster;
mod cluster_ha;
mod delivery;
mod diagnostics;
mod durability;
mod full_disk;
mod guard;
mod hostile;
mod login_policy;
mod logs;
mod packaging;
mod postfix;
mod profiles;
mod protocol;
mod proxy;
mod queue_control;
mod quotas;
mod relay_matrix;
mod reload;
mod sentinel;
mod service_user;
