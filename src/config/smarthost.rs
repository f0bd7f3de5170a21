//! `[[smarthost]]`: named smart-host profiles (a provider account, its hosts,
//! TLS, credentials, OAuth2 and transport), the presets that fill them for
//! Microsoft 365 and Google, and the old `[delivery] smarthost…` keys read
//! as the profile named "default".

use super::{ConfigDuration, DeliveryConfig, NextHop, SmarthostTls};
use serde::{Deserialize, Deserializer, Serialize};
use std::path::PathBuf;

/// The name the old `[delivery] smarthost` keys become.
pub const LEGACY_PROFILE: &str = "default";

/// A profile as written in the file: anything unset comes from the preset,
/// then from the defaults (see `Profile`).
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct SmarthostConfig {
    pub name: String,
    pub preset: Option<Preset>,
    /// "HOST:PORT" (or "smtps://HOST:465", "starttls://HOST:587"), tried in order.
    #[serde(deserialize_with = "smart_hosts")]
    pub hosts: Vec<NextHop>,
    pub tls: Option<SmarthostTls>,
    /// Check the hosts' certificates (name and chain); true unless set.
    pub verify: Option<bool>,
    /// Extra trust anchors (PEM) for this profile's hosts and token endpoint.
    pub ca_file: Option<PathBuf>,
    /// A TLS client certificate (PEM chain) and its key, for providers that
    /// trust a certificate instead of a password.
    pub client_cert: Option<PathBuf>,
    pub client_key: Option<PathBuf>,
    pub auth: Option<ProfileAuth>,
    /// The account (mailbox) the profile logs in as and, for Graph, sends as.
    pub user: Option<String>,
    pub password_file: Option<PathBuf>,
    /// Microsoft Entra tenant (ID or domain), for the microsoft365 preset's URLs.
    pub tenant: Option<String>,
    pub oauth_token_url: Option<String>,
    /// The device authorization endpoint (RFC 8628) for `portcullis oauth
    /// login`; derived from the token URL when it ends in "/token".
    pub oauth_device_url: Option<String>,
    pub oauth_client_id: Option<String>,
    pub oauth_client_secret_file: Option<PathBuf>,
    pub oauth_scope: Option<String>,
    pub oauth_grant: Option<OAuthGrant>,
    pub transport: Option<Transport>,
    pub graph_url: Option<String>,
    /// The mailbox the provider insists on: envelope sender and From: become it.
    pub rewrite_sender: Option<String>,
    /// How long the profile rests after the provider says its quota is spent
    /// and names no time itself.
    pub quota_backoff: Option<ConfigDuration>,
    /// Our own pacing, to stay within the provider's limits (the presets
    /// fill in the published figures); mail waits in the queue past them.
    pub messages_per_minute: Option<u64>,
    pub messages_per_day: Option<u64>,
    pub recipients_per_day: Option<u64>,
    /// More recipients than this go as several transactions.
    pub recipients_per_message: Option<u64>,
    /// The profile that takes the mail while this one's quota is spent.
    pub overflow: Option<String>,
}

/// A profile's sending limits (rolling windows: a minute, 24 hours).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Quota {
    pub messages_per_minute: Option<u64>,
    pub messages_per_day: Option<u64>,
    pub recipients_per_day: Option<u64>,
    pub recipients_per_message: Option<u64>,
}

impl Quota {
    pub fn is_limited(&self) -> bool {
        self.messages_per_minute.is_some()
            || self.messages_per_day.is_some()
            || self.recipients_per_day.is_some()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Preset {
    Microsoft365,
    GoogleWorkspace,
    GoogleSmtpRelay,
}

impl Preset {
    pub fn name(self) -> &'static str {
        match self {
            Preset::Microsoft365 => "microsoft365",
            Preset::GoogleWorkspace => "google-workspace",
            Preset::GoogleSmtpRelay => "google-smtp-relay",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ProfileAuth {
    None,
    Password,
    Xoauth2,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum OAuthGrant {
    /// The application's own identity (client ID and secret), no user sign-in.
    ClientCredentials,
    /// A user signed in once (`portcullis oauth login`); its refresh token is kept.
    RefreshToken,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Transport {
    Smtp,
    /// Microsoft Graph `sendMail` over HTTPS.
    Graph,
}

/// OAuth2 settings of a profile, complete.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OAuthSettings {
    pub token_url: String,
    pub device_url: Option<String>,
    pub client_id: String,
    pub client_secret_file: Option<PathBuf>,
    pub scope: String,
    pub grant: OAuthGrant,
}

/// A profile with its preset and defaults applied: what delivery uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Profile {
    pub name: String,
    /// Where it is written, for messages: "smarthost[1]" or "delivery".
    pub key: String,
    pub preset: Option<Preset>,
    pub hosts: Vec<NextHop>,
    pub tls: SmarthostTls,
    pub verify: bool,
    pub ca_file: Option<PathBuf>,
    pub client_cert: Option<PathBuf>,
    pub client_key: Option<PathBuf>,
    pub auth: ProfileAuth,
    pub user: Option<String>,
    pub password_file: Option<PathBuf>,
    pub oauth: Option<OAuthSettings>,
    pub transport: Transport,
    pub graph_url: String,
    pub rewrite_sender: Option<String>,
    pub quota_backoff: std::time::Duration,
    pub quota: Quota,
    pub overflow: Option<String>,
}

pub const DEFAULT_GRAPH_URL: &str = "https://graph.microsoft.com";
const DEFAULT_QUOTA_BACKOFF: std::time::Duration = std::time::Duration::from_secs(3600);

/// What a preset fills in, as the provider documents it.
struct PresetValues {
    hosts: &'static [&'static str],
    /// The provider's published sending limits (see README for the sources).
    quota: Quota,
    auth: ProfileAuth,
    token_url: Option<String>,
    device_url: Option<String>,
    scope: Option<&'static str>,
    grant: Option<OAuthGrant>,
}

fn preset_values(preset: Preset, c: &SmarthostConfig) -> PresetValues {
    match preset {
        Preset::Microsoft365 => {
            // "organizations" serves signed-in users of any work tenant; the
            // application's own identity needs the tenant named.
            let tenant = c.tenant.as_deref().unwrap_or("organizations");
            let base = format!("https://login.microsoftonline.com/{tenant}/oauth2/v2.0");
            let graph = c.transport == Some(Transport::Graph);
            let grant = c
                .oauth_grant
                .unwrap_or(if c.oauth_client_secret_file.is_some() {
                    OAuthGrant::ClientCredentials
                } else {
                    OAuthGrant::RefreshToken
                });
            let scope = match (graph, grant) {
                (false, OAuthGrant::ClientCredentials) => "https://outlook.office365.com/.default",
                (false, OAuthGrant::RefreshToken) => {
                    "https://outlook.office.com/SMTP.Send offline_access"
                }
                (true, OAuthGrant::ClientCredentials) => "https://graph.microsoft.com/.default",
                (true, OAuthGrant::RefreshToken) => {
                    "https://graph.microsoft.com/Mail.Send offline_access"
                }
            };
            PresetValues {
                hosts: &["smtp.office365.com:587"],
                // Exchange Online limits: 30 messages a minute by SMTP
                // submission, 10,000 recipients a day, 500 a message.
                quota: Quota {
                    messages_per_minute: Some(30),
                    messages_per_day: None,
                    recipients_per_day: Some(10_000),
                    recipients_per_message: Some(500),
                },
                auth: ProfileAuth::Xoauth2,
                token_url: Some(format!("{base}/token")),
                device_url: Some(format!("{base}/devicecode")),
                scope: Some(scope),
                grant: Some(grant),
            }
        }
        Preset::GoogleWorkspace => PresetValues {
            hosts: &["smtp.gmail.com:587"],
            // Gmail sending limits in Google Workspace: 2,000 messages a day
            // per user, 10,000 recipients a day, 100 a message by SMTP.
            quota: Quota {
                messages_per_minute: None,
                messages_per_day: Some(2_000),
                recipients_per_day: Some(10_000),
                recipients_per_message: Some(100),
            },
            auth: ProfileAuth::Xoauth2,
            token_url: Some("https://oauth2.googleapis.com/token".into()),
            device_url: Some("https://oauth2.googleapis.com/device/code".into()),
            scope: Some("https://mail.google.com/"),
            grant: Some(OAuthGrant::RefreshToken),
        },
        // The SMTP relay service admits by the sending IP address (or an
        // account's password / a client certificate), set in the Admin console.
        Preset::GoogleSmtpRelay => PresetValues {
            hosts: &["smtp-relay.gmail.com:587"],
            // SMTP relay service: 10,000 recipients a day per user, 100 a message.
            quota: Quota {
                messages_per_minute: None,
                messages_per_day: None,
                recipients_per_day: Some(10_000),
                recipients_per_message: Some(100),
            },
            auth: if c.password_file.is_some() {
                ProfileAuth::Password
            } else {
                ProfileAuth::None
            },
            token_url: None,
            device_url: None,
            scope: None,
            grant: None,
        },
    }
}

impl SmarthostConfig {
    /// This profile complete: explicit keys, else the preset, else defaults.
    pub fn resolve(&self, index: usize) -> Profile {
        let preset = self.preset.map(|p| preset_values(p, self));
        let hosts = if self.hosts.is_empty() {
            preset
                .as_ref()
                .map(|p| {
                    p.hosts
                        .iter()
                        .filter_map(|h| NextHop::smarthost(h).ok())
                        .collect()
                })
                .unwrap_or_default()
        } else {
            self.hosts.clone()
        };
        let token_url = self
            .oauth_token_url
            .clone()
            .or_else(|| preset.as_ref().and_then(|p| p.token_url.clone()));
        let auth = self.auth.unwrap_or_else(|| match &preset {
            Some(p) => p.auth,
            None if token_url.is_some() => ProfileAuth::Xoauth2,
            None if self.password_file.is_some() => ProfileAuth::Password,
            None => ProfileAuth::None,
        });
        let oauth = match (auth, token_url) {
            (ProfileAuth::Xoauth2, Some(token_url)) => {
                let grant = self
                    .oauth_grant
                    .or_else(|| preset.as_ref().and_then(|p| p.grant))
                    .unwrap_or(if self.oauth_client_secret_file.is_some() {
                        OAuthGrant::ClientCredentials
                    } else {
                        OAuthGrant::RefreshToken
                    });
                let device_url = self
                    .oauth_device_url
                    .clone()
                    .or_else(|| preset.as_ref().and_then(|p| p.device_url.clone()))
                    .or_else(|| {
                        token_url
                            .strip_suffix("/token")
                            .map(|base| format!("{base}/devicecode"))
                    });
                Some(OAuthSettings {
                    token_url,
                    device_url,
                    client_id: self.oauth_client_id.clone().unwrap_or_default(),
                    client_secret_file: self.oauth_client_secret_file.clone(),
                    scope: self
                        .oauth_scope
                        .clone()
                        .or_else(|| preset.as_ref().and_then(|p| p.scope.map(String::from)))
                        .unwrap_or_default(),
                    grant,
                })
            }
            _ => None,
        };
        Profile {
            name: self.name.clone(),
            key: format!("smarthost[{index}]"),
            preset: self.preset,
            hosts,
            tls: self.tls.unwrap_or(SmarthostTls::Starttls),
            verify: self.verify.unwrap_or(true),
            ca_file: self.ca_file.clone(),
            client_cert: self.client_cert.clone(),
            client_key: self.client_key.clone(),
            auth,
            user: self.user.clone(),
            password_file: self.password_file.clone(),
            oauth,
            transport: self.transport.unwrap_or(Transport::Smtp),
            graph_url: self
                .graph_url
                .clone()
                .unwrap_or_else(|| DEFAULT_GRAPH_URL.to_string())
                .trim_end_matches('/')
                .to_string(),
            rewrite_sender: self.rewrite_sender.clone(),
            quota_backoff: self
                .quota_backoff
                .map_or(DEFAULT_QUOTA_BACKOFF, |d| d.get()),
            quota: {
                let from_preset = preset.as_ref().map(|p| p.quota).unwrap_or_default();
                Quota {
                    messages_per_minute: self
                        .messages_per_minute
                        .or(from_preset.messages_per_minute),
                    messages_per_day: self.messages_per_day.or(from_preset.messages_per_day),
                    recipients_per_day: self.recipients_per_day.or(from_preset.recipients_per_day),
                    recipients_per_message: self
                        .recipients_per_message
                        .or(from_preset.recipients_per_message),
                }
            },
            overflow: self.overflow.clone(),
        }
    }

    /// The published limits of this profile's preset, if it has one.
    pub fn preset_quota(&self) -> Option<Quota> {
        self.preset.map(|p| preset_values(p, self).quota)
    }
}

impl Profile {
    /// The old `[delivery] smarthost…` keys as the profile "default".
    pub fn from_legacy(d: &DeliveryConfig) -> Option<Profile> {
        if d.smarthost.is_empty() {
            return None;
        }
        Some(Profile {
            name: LEGACY_PROFILE.to_string(),
            key: "delivery".to_string(),
            preset: None,
            hosts: d.smarthost.clone(),
            tls: d.smarthost_tls,
            verify: d.smarthost_verify,
            ca_file: d.smarthost_ca_file.clone(),
            client_cert: None,
            client_key: None,
            auth: if d.smarthost_password_file.is_some() {
                ProfileAuth::Password
            } else {
                ProfileAuth::None
            },
            user: d.smarthost_user.clone(),
            password_file: d.smarthost_password_file.clone(),
            oauth: None,
            transport: Transport::Smtp,
            graph_url: DEFAULT_GRAPH_URL.to_string(),
            rewrite_sender: None,
            quota_backoff: DEFAULT_QUOTA_BACKOFF,
            quota: Quota::default(),
            overflow: None,
        })
    }

    /// The full name of one of this profile's keys, for messages:
    /// "smarthost[1].password_file", or "delivery.smarthost_password_file"
    /// for the profile the old keys make.
    pub fn key_of(&self, key: &str) -> String {
        if self.key == "delivery" {
            let legacy = match key {
                "hosts" => "smarthost",
                "tls" => "smarthost_tls",
                "verify" => "smarthost_verify",
                "ca_file" => "smarthost_ca_file",
                "user" => "smarthost_user",
                "password_file" => "smarthost_password_file",
                other => other,
            };
            format!("delivery.{legacy}")
        } else {
            format!("{}.{key}", self.key)
        }
    }

    /// The domain of the account the profile logs in as, if it names one.
    pub fn account_domain(&self) -> Option<String> {
        self.user
            .as_deref()
            .and_then(|u| u.rsplit_once('@'))
            .map(|(_, d)| crate::smtp::address::Domain::normalize(d))
    }
}

/// Every profile of a config: the old keys' "default" first, then each
/// [[smarthost]] in file order.
pub fn profiles(delivery: &DeliveryConfig, smarthosts: &[SmarthostConfig]) -> Vec<Profile> {
    Profile::from_legacy(delivery)
        .into_iter()
        .chain(smarthosts.iter().enumerate().map(|(i, s)| s.resolve(i)))
        .collect()
}

/// `hosts`: one smart host or a list of them.
fn smart_hosts<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<NextHop>, D::Error> {
    super::delivery::one_or_many_smarthosts(d)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> SmarthostConfig {
        toml::from_str(text).unwrap()
    }

    #[test]
    fn microsoft365_preset_fills_hosts_oauth_and_scope_and_explicit_keys_win() {
        let p = parse(
            "name = \"m365\"\npreset = \"microsoft365\"\ntenant = \"contoso.onmicrosoft.com\"\nuser = \"relay@contoso.example\"\noauth_client_id = \"app\"\noauth_client_secret_file = \"/etc/portcullis/secret\"\n",
        )
        .resolve(0);
        assert_eq!(p.hosts, vec![NextHop::new("smtp.office365.com", 587)]);
        assert_eq!(p.tls, SmarthostTls::Starttls);
        assert_eq!(p.auth, ProfileAuth::Xoauth2);
        let o = p.oauth.unwrap();
        assert_eq!(
            o.token_url,
            "https://login.microsoftonline.com/contoso.onmicrosoft.com/oauth2/v2.0/token"
        );
        assert_eq!(o.grant, OAuthGrant::ClientCredentials);
        assert_eq!(o.scope, "https://outlook.office365.com/.default");
        let p = parse(
            "name = \"m\"\npreset = \"microsoft365\"\nhosts = \"smtp.test:2587\"\noauth_scope = \"s\"\n",
        )
        .resolve(3);
        assert_eq!(p.hosts, vec![NextHop::new("smtp.test", 2587)]);
        let o = p.oauth.clone().unwrap();
        assert_eq!(o.scope, "s");
        assert_eq!(
            o.grant,
            OAuthGrant::RefreshToken,
            "no secret: a user signs in"
        );
        assert_eq!(
            o.device_url.as_deref(),
            Some("https://login.microsoftonline.com/organizations/oauth2/v2.0/devicecode")
        );
        assert_eq!(p.key_of("user"), "smarthost[3].user");
    }

    #[test]
    fn defaults_follow_what_is_given() {
        let p = parse("name = \"isp\"\nhosts = [\"a.example\", \"smtps://b.example\"]\nuser = \"u\"\npassword_file = \"/p\"\n").resolve(0);
        assert_eq!(p.auth, ProfileAuth::Password);
        assert_eq!(p.hosts[1].port, 465);
        let p = parse("name = \"x\"\nhosts = \"a.example\"\noauth_token_url = \"https://idp.test/oauth2/token\"\n").resolve(0);
        assert_eq!(p.auth, ProfileAuth::Xoauth2);
        assert_eq!(
            p.oauth.unwrap().device_url.as_deref(),
            Some("https://idp.test/oauth2/devicecode")
        );
        let p = parse("name = \"g\"\npreset = \"google-smtp-relay\"\n").resolve(0);
        assert_eq!(
            (p.auth, p.hosts[0].host.as_str()),
            (ProfileAuth::None, "smtp-relay.gmail.com")
        );
    }

    #[test]
    fn legacy_keys_are_the_default_profile() {
        let d: DeliveryConfig = toml::from_str(
            "mode = \"smarthost\"\nsmarthost = \"smtp.isp.example\"\nsmarthost_user = \"u\"\nsmarthost_password_file = \"/p\"\n",
        )
        .unwrap();
        let all = profiles(&d, &[]);
        assert_eq!(all.len(), 1);
        assert_eq!(all[0].name, "default");
        assert_eq!(all[0].auth, ProfileAuth::Password);
        assert_eq!(
            all[0].key_of("password_file"),
            "delivery.smarthost_password_file"
        );
    }
}
