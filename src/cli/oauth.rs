//! `portcullis oauth login PROFILE`: signs a user in for a profile with the
//! device-code flow (RFC 8628: prints where to go and the code to type,
//! waits, stores the tokens), or takes a refresh token on stdin, or for an
//! application's own identity fetches a first token to prove the settings.
//! `portcullis oauth status [PROFILE]`: who is signed in, until when, the
//! last refresh and the last error. Tokens are never printed.

use super::ConfigArgs;
use crate::clock::unix_now;
use crate::config::{Config, OAuthGrant, Profile};
use crate::oauth::endpoint;
use crate::oauth::store::{self, TokenFile};
use std::time::Duration;

#[derive(Debug, clap::Args)]
pub struct OAuthArgs {
    #[command(subcommand)]
    action: OAuthAction,
    #[command(flatten)]
    config: ConfigArgs,
}

#[derive(Debug, clap::Subcommand)]
enum OAuthAction {
    /// Sign in for a profile (device code), or check its client credentials.
    Login {
        profile: String,
        /// Read a refresh token from stdin instead of signing in (one
        /// obtained elsewhere, e.g. Google's OAuth playground).
        #[arg(long)]
        refresh_token_stdin: bool,
        /// How long to wait for the user to sign in.
        #[arg(long, default_value = "15m")]
        timeout: humantime::Duration,
    },
    /// Who is signed in for each OAuth2 profile, the expiry and the last refresh.
    Status {
        profile: Option<String>,
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
}

pub fn run(args: OAuthArgs) -> anyhow::Result<i32> {
    let config = args.config.load()?;
    match args.action {
        OAuthAction::Login {
            profile,
            refresh_token_stdin,
            timeout,
        } => {
            let p = oauth_profile(&config, &profile)?;
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            rt.block_on(login(&config, &p, refresh_token_stdin, timeout.into()))
        }
        OAuthAction::Status { profile, json } => status(&config, profile.as_deref(), json),
    }
}

fn oauth_profile(config: &Config, name: &str) -> anyhow::Result<Profile> {
    let all = config.profiles();
    let Some(p) = all.iter().find(|p| p.name == name) else {
        anyhow::bail!(
            "no profile {name:?}; the profiles are: {}",
            all.iter()
                .map(|p| format!("{:?}", p.name))
                .collect::<Vec<_>>()
                .join(", ")
        );
    };
    if p.oauth.is_none() {
        anyhow::bail!(
            "profile {name:?} does not use OAuth2 ({} is not \"xoauth2\")",
            p.key_of("auth")
        );
    }
    Ok(p.clone())
}

async fn login(
    config: &Config,
    p: &Profile,
    refresh_token_stdin: bool,
    limit: Duration,
) -> anyhow::Result<i32> {
    let resolver = crate::dns::Resolver::from_config(&config.dns)
        .map_err(|e| anyhow::anyhow!("[dns]: {e}"))?;
    let http = endpoint::http_client(p, &resolver).map_err(anyhow::Error::msg)?;
    let path = config.oauth_token_file(&p.name);
    let grant = p.oauth.as_ref().map(|o| o.grant);
    let granted = if refresh_token_stdin {
        let mut line = String::new();
        std::io::stdin().read_line(&mut line)?;
        let supplied = line.trim().to_string();
        if supplied.is_empty() {
            anyhow::bail!("no refresh token on stdin");
        }
        let mut as_refresh = p.clone();
        if let Some(o) = &mut as_refresh.oauth {
            o.grant = OAuthGrant::RefreshToken;
        }
        let mut g = endpoint::fetch(&as_refresh, &http, Some(&supplied))
            .await
            .map_err(|e| anyhow::anyhow!("the refresh token was not accepted: {e}"))?;
        g.refresh_token.get_or_insert(supplied);
        g
    } else if grant == Some(OAuthGrant::ClientCredentials) {
        outln!(
            "profile {:?} uses the application's own identity (client credentials): no one signs in; fetching a token to check the settings",
            p.name
        );
        endpoint::fetch(p, &http, None)
            .await
            .map_err(|e| anyhow::anyhow!("no token: {e}"))?
    } else {
        let started = endpoint::device_start(p, &http)
            .await
            .map_err(|e| anyhow::anyhow!("the sign-in could not start: {e}"))?;
        outln!(
            "To sign in for profile {:?}{}, open {} in a browser and enter the code {} (valid for {}).",
            p.name,
            p.user
                .as_deref()
                .map(|u| format!(" as {u}"))
                .unwrap_or_default(),
            started.verification_uri(),
            started.user_code(),
            humantime::format_duration(started.expires_in())
        );
        outln!("Waiting for the sign-in...");
        endpoint::device_finish(p, &http, &started, limit.min(started.expires_in()))
            .await
            .map_err(|e| anyhow::anyhow!("not signed in: {e}"))?
    };
    let now = unix_now();
    let tokens = TokenFile {
        profile: p.name.clone(),
        access_token: Some(granted.access_token),
        expires_at: Some(now + granted.expires_in as i64),
        refresh_token: granted.refresh_token,
        last_refresh: Some(now),
        error: None,
    };
    if grant == Some(OAuthGrant::RefreshToken) && tokens.refresh_token.is_none() {
        anyhow::bail!(
            "the token endpoint gave no refresh token: add \"offline_access\" to {} (Microsoft) or ask for offline access",
            p.key_of("oauth_scope")
        );
    }
    store::save(&path, &tokens)
        .map_err(|e| anyhow::anyhow!("cannot store the tokens in {}: {e}", path.display()))?;
    outln!(
        "signed in: tokens stored in {} (mode 0600); the running server uses them from its next delivery (`portcullis queue retry --all` to send waiting mail now)",
        path.display()
    );
    Ok(0)
}

#[derive(serde::Serialize)]
struct ProfileStatus {
    name: String,
    grant: &'static str,
    logged_in: bool,
    expires: Option<String>,
    last_refresh: Option<String>,
    error: Option<String>,
}

fn rfc3339(t: Option<i64>) -> Option<String> {
    t.and_then(|t| chrono::DateTime::from_timestamp(t, 0))
        .map(|d| d.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
}

fn status(config: &Config, only: Option<&str>, json: bool) -> anyhow::Result<i32> {
    let profiles: Vec<Profile> = match only {
        Some(name) => vec![oauth_profile(config, name)?],
        None => config
            .profiles()
            .into_iter()
            .filter(|p| p.oauth.is_some())
            .collect(),
    };
    let mut out = Vec::new();
    for p in &profiles {
        let s = crate::oauth::sign_in_state(config, p)?;
        out.push(ProfileStatus {
            name: p.name.clone(),
            grant: match p.oauth.as_ref().map(|o| o.grant) {
                Some(OAuthGrant::RefreshToken) => "refresh_token",
                _ => "client_credentials",
            },
            logged_in: s.logged_in,
            expires: rfc3339(s.expires),
            last_refresh: rfc3339(s.last_refresh),
            error: s.error,
        });
    }
    let healthy = out.iter().all(|s| s.logged_in && s.error.is_none());
    if json {
        outln!("{}", serde_json::json!({ "profiles": out }));
    } else if out.is_empty() {
        outln!("no profile uses OAuth2 (auth = \"xoauth2\")");
    } else {
        for s in &out {
            outln!(
                "{}: {} ({}), token expires {}, last refresh {}{}",
                s.name,
                if s.logged_in {
                    "signed in"
                } else {
                    "NOT signed in"
                },
                s.grant,
                s.expires.as_deref().unwrap_or("-"),
                s.last_refresh.as_deref().unwrap_or("never"),
                s.error
                    .as_deref()
                    .map(|e| format!("; last error: {e}"))
                    .unwrap_or_default()
            );
            if !s.logged_in && s.grant == "refresh_token" {
                outln!("  sign in with: portcullis oauth login {}", s.name);
            }
        }
    }
    Ok(if healthy { 0 } else { 1 })
}
