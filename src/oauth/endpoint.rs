//! Talking to a token endpoint with the `oauth2` crate: the client
//! credentials and refresh-token grants, and the device-code flow. HTTPS
//! only, checked against the web PKI plus the profile's `ca_file`, no
//! redirects followed. Errors are in words and never carry a secret (the
//! crate keeps the raw response body of a parse error: it is not shown).

use crate::config::{OAuthGrant, OAuthSettings, Profile};
use oauth2::basic::BasicClient;
use oauth2::{
    AuthType, ClientId, ClientSecret, DeviceAuthorizationUrl, RefreshToken, RequestTokenError,
    Scope, StandardDeviceAuthorizationResponse, TokenResponse, TokenUrl,
};
use std::time::Duration;

/// What a token endpoint gave.
#[derive(Clone)]
pub struct Granted {
    pub access_token: String,
    /// Seconds it lives, as the endpoint said (an hour when it did not).
    pub expires_in: u64,
    /// A new refresh token, when the endpoint rotated it.
    pub refresh_token: Option<String>,
}

/// Why no token was had.
#[derive(Debug, Clone)]
pub struct EndpointError {
    pub message: String,
    /// The endpoint refused the grant itself (invalid_grant, invalid_client,
    /// unauthorized_client…): retrying will not help until someone acts.
    pub refused: bool,
}

impl std::fmt::Display for EndpointError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

/// The HTTPS client for a profile's endpoints (token, Graph): names looked
/// up with `resolver`.
pub fn http_client(
    profile: &Profile,
    resolver: &crate::dns::Resolver,
) -> Result<reqwest::Client, String> {
    let tls = crate::client_tls::verified_for(profile)?;
    reqwest::Client::builder()
        .use_preconfigured_tls((*tls).clone())
        .dns_resolver(crate::dns::for_http(resolver))
        .https_only(true)
        .redirect(reqwest::redirect::Policy::none())
        .connect_timeout(Duration::from_secs(20))
        .timeout(Duration::from_secs(60))
        .build()
        .map_err(|e| format!("cannot set up HTTPS for profile {:?}: {e}", profile.name))
}

/// The profile's client secret, read afresh (the file may change while we run).
async fn client_secret(o: &OAuthSettings, key: &str) -> Result<Option<String>, EndpointError> {
    let Some(path) = &o.client_secret_file else {
        return Ok(None);
    };
    let text = tokio::fs::read_to_string(path)
        .await
        .map_err(|e| EndpointError {
            message: format!("{key} {}: {e}", path.display()),
            refused: false,
        })?;
    Ok(Some(text.trim().to_string()))
}

fn scopes(o: &OAuthSettings) -> Vec<Scope> {
    o.scope
        .split_whitespace()
        .map(|s| Scope::new(s.to_string()))
        .collect()
}

fn bad_url(what: &str, e: impl std::fmt::Display) -> EndpointError {
    EndpointError {
        message: format!("bad {what} URL: {e}"),
        refused: true,
    }
}

/// Turns the crate's error into words without the response body.
fn describe<RE: std::error::Error + 'static, T: oauth2::ErrorResponse + 'static>(
    e: RequestTokenError<RE, T>,
) -> EndpointError {
    match e {
        RequestTokenError::ServerResponse(r) => {
            let json = serde_json::to_value(&r).unwrap_or_default();
            let code = json["error"].as_str().unwrap_or("error").to_string();
            let description = json["error_description"]
                .as_str()
                .map(|d| format!(": {}", d.lines().next().unwrap_or_default()))
                .unwrap_or_default();
            EndpointError {
                refused: !matches!(
                    code.as_str(),
                    "temporarily_unavailable" | "server_error" | "slow_down"
                ),
                message: format!("the token endpoint refused: {code}{description}"),
            }
        }
        RequestTokenError::Request(e) => {
            let mut message = format!("the token endpoint could not be reached: {e}");
            let mut source = std::error::Error::source(&e);
            while let Some(s) = source {
                message.push_str(&format!(": {s}"));
                source = s.source();
            }
            EndpointError {
                message,
                refused: false,
            }
        }
        RequestTokenError::Parse(e, _body) => EndpointError {
            message: format!(
                "the token endpoint's answer is not an OAuth2 token response ({})",
                e.path()
            ),
            refused: false,
        },
        RequestTokenError::Other(e) => EndpointError {
            message: format!("the token endpoint: {e}"),
            refused: false,
        },
    }
}

fn granted(t: &oauth2::basic::BasicTokenResponse) -> Granted {
    Granted {
        access_token: t.access_token().secret().clone(),
        expires_in: t.expires_in().map_or(3600, |d| d.as_secs()),
        refresh_token: t.refresh_token().map(|r| r.secret().clone()),
    }
}

/// A new access token for the profile's grant; `refresh_token` is the one
/// kept from the last sign-in (needed for that grant).
pub async fn fetch(
    profile: &Profile,
    http: &reqwest::Client,
    refresh_token: Option<&str>,
) -> Result<Granted, EndpointError> {
    let o = profile.oauth.as_ref().ok_or_else(|| EndpointError {
        message: format!("profile {:?} has no OAuth2 settings", profile.name),
        refused: true,
    })?;
    let secret = client_secret(o, &profile.key_of("oauth_client_secret_file")).await?;
    let mut client = BasicClient::new(ClientId::new(o.client_id.clone()))
        .set_token_uri(TokenUrl::new(o.token_url.clone()).map_err(|e| bad_url("token", e))?)
        // Microsoft and Google both take the secret in the form body.
        .set_auth_type(AuthType::RequestBody);
    if let Some(secret) = secret {
        client = client.set_client_secret(ClientSecret::new(secret));
    }
    let response = match o.grant {
        OAuthGrant::ClientCredentials => {
            client
                .exchange_client_credentials()
                .add_scopes(scopes(o))
                .request_async(http)
                .await
        }
        OAuthGrant::RefreshToken => {
            let Some(rt) = refresh_token else {
                return Err(EndpointError {
                    message: format!(
                        "nobody has signed in for this profile: run `portcullis oauth login {}`",
                        profile.name
                    ),
                    refused: true,
                });
            };
            let rt = RefreshToken::new(rt.to_string());
            client
                .exchange_refresh_token(&rt)
                .add_scopes(scopes(o))
                .request_async(http)
                .await
        }
    };
    response.map(|t| granted(&t)).map_err(describe)
}

/// A device-code sign-in under way: what to show the user.
pub struct DeviceLogin {
    pub details: StandardDeviceAuthorizationResponse,
}

impl DeviceLogin {
    pub fn verification_uri(&self) -> String {
        self.details.verification_uri().to_string()
    }
    pub fn user_code(&self) -> String {
        self.details.user_code().secret().clone()
    }
    pub fn expires_in(&self) -> Duration {
        self.details.expires_in()
    }
}

/// A client with a token URL and a device authorization URL set.
type DeviceClient = oauth2::Client<
    oauth2::basic::BasicErrorResponse,
    oauth2::basic::BasicTokenResponse,
    oauth2::basic::BasicTokenIntrospectionResponse,
    oauth2::StandardRevocableToken,
    oauth2::basic::BasicRevocationErrorResponse,
    oauth2::EndpointNotSet,
    oauth2::EndpointSet,
    oauth2::EndpointNotSet,
    oauth2::EndpointNotSet,
    oauth2::EndpointSet,
>;

fn device_client(profile: &Profile, secret: Option<String>) -> Result<DeviceClient, EndpointError> {
    let o = profile.oauth.as_ref().ok_or_else(|| EndpointError {
        message: format!("profile {:?} has no OAuth2 settings", profile.name),
        refused: true,
    })?;
    let device_url = o.device_url.clone().ok_or_else(|| EndpointError {
        message: format!(
            "{} is not set and cannot be derived from the token URL",
            profile.key_of("oauth_device_url")
        ),
        refused: true,
    })?;
    let mut client = BasicClient::new(ClientId::new(o.client_id.clone()))
        .set_token_uri(TokenUrl::new(o.token_url.clone()).map_err(|e| bad_url("token", e))?)
        .set_device_authorization_url(
            DeviceAuthorizationUrl::new(device_url).map_err(|e| bad_url("device", e))?,
        )
        .set_auth_type(AuthType::RequestBody);
    if let Some(secret) = secret {
        client = client.set_client_secret(ClientSecret::new(secret));
    }
    Ok(client)
}

/// Starts a device-code sign-in (RFC 8628 section 3.1).
pub async fn device_start(
    profile: &Profile,
    http: &reqwest::Client,
) -> Result<DeviceLogin, EndpointError> {
    let o = profile.oauth.as_ref().ok_or_else(|| EndpointError {
        message: "no OAuth2 settings".into(),
        refused: true,
    })?;
    let secret = client_secret(o, &profile.key_of("oauth_client_secret_file")).await?;
    let client = device_client(profile, secret)?;
    let details = client
        .exchange_device_code()
        .add_scopes(scopes(o))
        .request_async(http)
        .await
        .map_err(describe)?;
    Ok(DeviceLogin { details })
}

/// Waits (polling as the endpoint asks, at most `limit`) until the user
/// has signed in, then returns the tokens.
pub async fn device_finish(
    profile: &Profile,
    http: &reqwest::Client,
    login: &DeviceLogin,
    limit: Duration,
) -> Result<Granted, EndpointError> {
    let o = profile.oauth.as_ref().ok_or_else(|| EndpointError {
        message: "no OAuth2 settings".into(),
        refused: true,
    })?;
    let secret = client_secret(o, &profile.key_of("oauth_client_secret_file")).await?;
    let client = device_client(profile, secret)?;
    client
        .exchange_device_access_token(&login.details)
        .request_async(http, tokio::time::sleep, Some(limit))
        .await
        .map(|t| granted(&t))
        .map_err(describe)
}
