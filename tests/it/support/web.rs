//! A small HTTP client for the admin page (ureq, blocking: call it from
//! `block_in_place`), keeping the session cookie like a browser would.

use std::net::SocketAddr;

pub struct Web {
    agent: ureq::Agent,
    base: String,
    pub cookie: Option<String>,
}

pub struct Page {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl Page {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("{e}: {}", self.body))
    }
}

impl Web {
    pub fn new(addr: SocketAddr) -> Web {
        let agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .max_redirects(0)
            .timeout_global(Some(std::time::Duration::from_secs(60)))
            .build()
            .into();
        Web {
            agent,
            base: format!("http://{addr}"),
            cookie: None,
        }
    }

    fn finish(&mut self, r: Result<ureq::http::Response<ureq::Body>, ureq::Error>) -> Page {
        let mut r = r.expect("HTTP request");
        let headers: Vec<(String, String)> = r
            .headers()
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_str().unwrap_or("").to_string()))
            .collect();
        let body = r.body_mut().read_to_string().unwrap_or_default();
        let page = Page {
            status: r.status().as_u16(),
            headers,
            body,
        };
        if let Some(c) = page.header("set-cookie") {
            let pair = c.split(';').next().unwrap_or("").to_string();
            self.cookie = if c.contains("Max-Age=0") {
                None
            } else {
                Some(pair)
            };
        }
        page
    }

    pub fn get(&mut self, path: &str) -> Page {
        self.get_with(path, &[])
    }

    /// GET with extra headers.
    pub fn get_with(&mut self, path: &str, headers: &[(&str, &str)]) -> Page {
        let mut req = self.agent.get(format!("{}{path}", self.base));
        if let Some(c) = &self.cookie {
            req = req.header("Cookie", c);
        }
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let r = req.call();
        self.finish(r)
    }

    /// POST with extra headers and an optional JSON body.
    pub fn post(
        &mut self,
        path: &str,
        headers: &[(&str, &str)],
        json: Option<serde_json::Value>,
    ) -> Page {
        let mut req = self.agent.post(format!("{}{path}", self.base));
        if let Some(c) = &self.cookie {
            req = req.header("Cookie", c);
        }
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let r = match json {
            Some(v) => req.send_json(v),
            None => req.send_empty(),
        };
        self.finish(r)
    }

    pub fn post_form(&mut self, path: &str, fields: &[(&str, &str)]) -> Page {
        let mut req = self.agent.post(format!("{}{path}", self.base));
        if let Some(c) = &self.cookie {
            req = req.header("Cookie", c);
        }
        let r = req.send_form(fields.iter().copied());
        self.finish(r)
    }

    pub fn login(&mut self, user: &str, password: &str) -> Page {
        self.post_form("/login", &[("user", user), ("password", password)])
    }

    /// The session's CSRF token.
    pub fn csrf(&mut self) -> String {
        let s = self.get("/api/session");
        assert_eq!(s.status, 200, "{}", s.body);
        s.json()["csrf"].as_str().unwrap().to_string()
    }
}
