//! What a provider's refusals mean for a whole profile, and the profiles
//! resting because of one. An authentication or quota refusal says nothing
//! about the message: every message through that profile would get the
//! same answer. Such a profile's mail is deferred, all of it and without a
//! connection per message, until the rest ends (a provider's own time, the
//! profile's back-off, a reload or `queue retry --all`), and the admin is
//! told in plain words what to do.

use super::result::{AttemptResult, Stage};
use crate::config::{Profile, ProfileAuth, Transport};
use std::collections::HashMap;
use std::sync::Mutex;

/// How long a profile rests after its credentials were refused: long enough
/// not to hammer the provider (Microsoft locks accounts that keep failing),
/// short enough that a fixed token or password is soon used.
pub const AUTH_REST: i64 = 300;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProblemKind {
    /// Credentials refused, or authentication not possible as configured.
    Auth,
    /// The provider's sending quota is spent.
    Quota,
}

impl ProblemKind {
    pub fn name(self) -> &'static str {
        match self {
            ProblemKind::Auth => "auth",
            ProblemKind::Quota => "quota",
        }
    }
}

/// A profile-wide refusal, understood.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub kind: ProblemKind,
    /// What happened and what the admin must do, in plain words.
    pub advice: String,
    /// Seconds to rest, when the provider said or implied it.
    pub rest: Option<i64>,
}

/// Whether `r` (a refusal through `profile`) is about the profile rather
/// than the message.
pub fn classify(r: &AttemptResult, profile: &Profile) -> Option<Problem> {
    let code = r.code.unwrap_or(0);
    let enhanced = r.enhanced;
    let is = |class, subject, detail| enhanced.is_some_and(|e| e.is(class, subject, detail));
    let text = r.text.to_ascii_lowercase();
    let auth = |advice: String| {
        Some(Problem {
            kind: ProblemKind::Auth,
            advice,
            rest: None,
        })
    };
    let quota = |advice: String, rest: Option<i64>| {
        Some(Problem {
            kind: ProblemKind::Quota,
            advice,
            rest,
        })
    };
    if is(5, 7, 30) || text.contains("basic authentication is not supported") {
        return auth(format!(
            "Microsoft 365 rejected basic authentication: switch profile {:?} to auth = \"xoauth2\" (README: Microsoft 365)",
            profile.name
        ));
    }
    if is(5, 7, 57) || (code == 530 && r.stage != Stage::RcptTo) {
        return auth(format!(
            "the provider requires this relay to log in before sending: set {} (\"password\" or \"xoauth2\") and its credentials",
            profile.key_of("auth")
        ));
    }
    if r.stage == Stage::Auth && (code >= 500 || code == 0 || code == 454) {
        return auth(credentials_advice(profile));
    }
    if is(5, 2, 0) && text.contains("submissionquotaexceeded") {
        return quota(
            format!(
                "Microsoft 365 says the mailbox of profile {:?} has used its sending quota (10,000 recipients a day, 30 messages a minute); mail waits until it frees",
                profile.name
            ),
            None,
        );
    }
    if is(5, 4, 5) || text.contains("daily user sending limit exceeded") {
        return quota(
            format!(
                "Google says profile {:?} reached its daily sending limit; mail waits until it frees (up to 24 hours)",
                profile.name
            ),
            None,
        );
    }
    if is(4, 2, 1) && matches!(r.stage, Stage::MailFrom | Stage::Auth | Stage::Greeting) {
        return quota(
            format!(
                "the provider asks profile {:?} to slow down (rate limited); mail waits a while",
                profile.name
            ),
            Some((profile.quota_backoff.as_secs() as i64 / 4).max(60)),
        );
    }
    None
}

/// What to check when the provider refused the profile's credentials.
pub fn credentials_advice(profile: &Profile) -> String {
    match (profile.auth, profile.transport) {
        (ProfileAuth::Xoauth2, Transport::Graph) => format!(
            "Microsoft Graph refused profile {:?}'s token: check that the app registration has the Mail.Send permission (admin consent granted) and that {} is a mailbox it may send as",
            profile.name,
            profile.key_of("user")
        ),
        (ProfileAuth::Xoauth2, _) => format!(
            "the provider refused profile {:?}'s OAuth2 token even after a refresh: check the app registration's permissions (SMTP.Send, or for an app's own identity the mailbox's service principal), that SMTP AUTH is enabled for {}, and `portcullis oauth status {}`",
            profile.name,
            profile.user.as_deref().unwrap_or("the mailbox"),
            profile.name
        ),
        (ProfileAuth::Password, _) => format!(
            "the provider refused profile {:?}'s password: check {} and {}",
            profile.name,
            profile.key_of("user"),
            profile.key_of("password_file")
        ),
        (ProfileAuth::None, _) => format!(
            "the provider wants profile {:?} to log in: set {} and its credentials",
            profile.name,
            profile.key_of("auth")
        ),
    }
}

/// A profile at rest.
#[derive(Debug, Clone)]
pub struct Rest {
    pub until: i64,
    pub kind: ProblemKind,
    /// The refusal that started it, for every message deferred meanwhile.
    pub result: AttemptResult,
    pub advice: String,
}

/// The profiles resting now.
#[derive(Default)]
pub struct Resting {
    profiles: Mutex<HashMap<String, Rest>>,
}

impl Resting {
    /// The rest of `profile` at `now`, if it has one.
    pub fn get(&self, profile: &str, now: i64) -> Option<Rest> {
        let map = self.profiles.lock().unwrap_or_else(|p| p.into_inner());
        map.get(profile).filter(|r| r.until > now).cloned()
    }

    pub fn start(&self, profile: &str, rest: Rest) {
        let mut map = self.profiles.lock().unwrap_or_else(|p| p.into_inner());
        map.insert(profile.to_string(), rest);
    }

    /// Ends a profile's rest; true when it had one (even an expired one:
    /// the profile works again, which is worth saying once).
    pub fn end(&self, profile: &str) -> bool {
        let mut map = self.profiles.lock().unwrap_or_else(|p| p.into_inner());
        map.remove(profile).is_some()
    }

    /// Every rest ends (a reload, `queue retry --all`).
    pub fn clear(&self) {
        self.profiles
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clear();
    }

    /// Every profile with a rest not yet ended, for the dashboard and doctor.
    pub fn all(&self) -> Vec<(String, Rest)> {
        let map = self.profiles.lock().unwrap_or_else(|p| p.into_inner());
        let mut v: Vec<_> = map.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
        v.sort_by(|a, b| a.0.cmp(&b.0));
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    fn profile(text: &str) -> Profile {
        Config::parse(text, "t").unwrap().profiles().remove(0)
    }

    fn reply(stage: Stage, code: u16, text: &str) -> AttemptResult {
        let (enhanced, rest) = text.split_once(' ').unwrap();
        AttemptResult {
            stage,
            code: Some(code),
            enhanced: crate::attempt::EnhancedStatus::parse(enhanced),
            remote: Some("smtp.test".into()),
            remote_ip: None,
            tls_policy: None,
            text: rest.into(),
        }
    }

    #[test]
    fn provider_answers_are_understood() {
        let p = profile(
            "[[smarthost]]\nname = \"m365\"\nhosts = \"smtp.test:587\"\nuser = \"a@contoso.example\"\npassword_file = \"/dev/null\"\n",
        );
        let basic = classify(
            &reply(
                Stage::Auth,
                550,
                "5.7.30 Basic authentication is not supported for Client Submission",
            ),
            &p,
        )
        .unwrap();
        assert_eq!(basic.kind, ProblemKind::Auth);
        assert!(
            basic.advice.contains("auth = \"xoauth2\""),
            "{}",
            basic.advice
        );
        for (stage, code, text) in [
            (Stage::Auth, 535, "5.7.3 Authentication unsuccessful"),
            (
                Stage::MailFrom,
                530,
                "5.7.57 Client not authenticated to send mail",
            ),
        ] {
            assert_eq!(
                classify(&reply(stage, code, text), &p).map(|x| x.kind),
                Some(ProblemKind::Auth),
                "{text}"
            );
        }
        for (stage, code, text) in [
            (
                Stage::Data,
                554,
                "5.2.0 STOREDRV.Submission.Exception:SubmissionQuotaExceededException",
            ),
            (
                Stage::MailFrom,
                550,
                "5.4.5 Daily SMTP relay limit exceeded for user",
            ),
            (Stage::MailFrom, 450, "4.2.1 rate limited"),
        ] {
            assert_eq!(
                classify(&reply(stage, code, text), &p).map(|x| x.kind),
                Some(ProblemKind::Quota),
                "{text}"
            );
        }
        assert_eq!(
            classify(&reply(Stage::RcptTo, 550, "5.1.1 no such user"), &p),
            None
        );
        assert_eq!(
            classify(
                &reply(Stage::RcptTo, 450, "4.2.1 receiving mail too fast"),
                &p
            ),
            None,
            "a busy recipient is the recipient's matter"
        );
    }
}
