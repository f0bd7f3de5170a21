//! Ends report periods and sends their reports to each policy domain's
//! `rua` (`_smtp._tls.DOMAIN`, "v=TLSRPTv1; rua=mailto:…,https://…").

use crate::app::Context;
use crate::tlsrpt::Collector;
use mail_auth::common::parse::TxtRecordParser;
use mail_auth::mta_sts::{ReportUri, TlsRpt};
use mail_auth::report::tlsrpt::TlsReport;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

/// Saves the counts every few seconds and sends the reports of each period
/// that ended, with the context current at the time.
pub async fn run(
    collector: Arc<Collector>,
    current: impl Fn() -> Arc<Context> + Send + 'static,
    stop: CancellationToken,
) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = tick.tick() => {}
        }
        collector.save();
        let ctx = current();
        if !ctx.config.delivery.tls_rpt {
            continue;
        }
        let period = ctx.config.delivery.tls_rpt_period.get().as_secs().max(1) as i64;
        let now = crate::clock::unix_now();
        let start = collector.period_start(now, period);
        let end = start + period;
        if now < end {
            continue;
        }
        let host = ctx.hostname.clone();
        let reports = collector.close(
            now - now.rem_euclid(period),
            end,
            &host,
            &format!("postmaster@{host}"),
        );
        for (domain, report) in reports {
            send(&ctx, &domain, &report).await;
        }
    }
    collector.save();
}

/// Sends one domain's report to every address its `_smtp._tls` record names.
async fn send(ctx: &Context, domain: &str, report: &TlsReport) {
    let Some(resolver) = ctx.checks.resolver() else {
        return;
    };
    let records = match resolver.txt(&format!("_smtp._tls.{domain}")).await {
        Ok(r) => r,
        Err(e) => {
            warn!(domain, error = %e, "cannot look up where TLS reports go; this period's report is dropped");
            return;
        }
    };
    let Some(rpt) = records
        .iter()
        .filter(|r| r.starts_with("v=TLSRPTv1"))
        .find_map(|r| TlsRpt::parse(r.as_bytes()).ok())
    else {
        return; // the domain asks for no reports
    };
    let host = &ctx.hostname;
    for uri in &rpt.rua {
        let sent = match uri {
            ReportUri::Mail(address) => by_mail(ctx, domain, report, address).await,
            ReportUri::Http(url) => by_https(ctx, report, url).await,
        };
        match sent {
            Ok(()) => {
                info!(domain, submitter = %host, report_id = %report.report_id, "TLS report sent")
            }
            Err(e) => warn!(domain, error = %e, "TLS report not sent"),
        }
    }
}

async fn by_mail(
    ctx: &Context,
    domain: &str,
    report: &TlsReport,
    address: &str,
) -> Result<(), String> {
    let host = &ctx.hostname;
    let from = format!("postmaster@{host}");
    let message = report
        .to_rfc5322(
            domain,
            host,
            ("TLS reports", from.as_str()),
            [address].into_iter(),
        )
        .map_err(|e| e.to_string())?;
    crate::queue::local_mail::submit(
        ctx.queueing(),
        crate::queue::local_mail::LocalMail {
            id: &crate::spool::QueueId::new(),
            hostname: host,
            to: address,
            message: message.into_bytes(),
            smtputf8: false,
        },
    )
    .await
}

async fn by_https(ctx: &Context, report: &TlsReport, url: &str) -> Result<(), String> {
    use std::io::Write;
    if !url.starts_with("https://") {
        return Err(format!("{url}: reports are posted over https only"));
    }
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gz.write_all(report.to_json().as_bytes())
        .map_err(|e| e.to_string())?;
    let body = gz.finish().map_err(|e| e.to_string())?;
    let tls = crate::client_tls::verified_with(
        ctx.config.delivery.tls_ca_file.as_deref(),
        "delivery.tls_ca_file",
    )?;
    let mut builder = reqwest::Client::builder()
        .use_preconfigured_tls((*tls).clone())
        .https_only(true)
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(60));
    if let Some(resolver) = ctx.checks.resolver() {
        builder = builder.dns_resolver(crate::dns::for_http(resolver));
    }
    let client = builder.build().map_err(|e| e.to_string())?;
    let response = client
        .post(url)
        .header(reqwest::header::CONTENT_TYPE, "application/tlsrpt+gzip")
        .body(body)
        .send()
        .await
        .map_err(|e| e.without_url().to_string())?;
    if response.status().is_success() {
        Ok(())
    } else {
        Err(format!("the receiver answered HTTP {}", response.status()))
    }
}
