//! The HTTP surface of the real daemon: the JSON API answers with the
//! CLI's shapes, tokens and roles are enforced, errors say what is wrong,
//! the OpenAPI document describes what the server answers, and SIGHUP
//! reloads the tokens.

mod common;

use std::time::Duration;

use common::http::{
    assert_error, base_url, get, post, token_env, ADMIN, AGENT, HTTP_CONFIG, METRICS,
};
use common::{wait_until, TestApp};
use serde_json::{json, Value};

/// A simulated Amazon account with 4 buyers and 6 messages, polled once
/// (its schedule is yearly), and the HTTP server.
fn app() -> TestApp {
    let mut app = TestApp::new(
        None,
        &format!(
            r#"
[[instances]]
name = "shop"
type = "simulated"
schedule = "0 0 1 1 *"
[instances.simulated]
channel = "amazon"
per_poll = 6
threads = 4
{HTTP_CONFIG}"#
        ),
    );
    app.env = token_env();
    app
}

/// Drops `time_left_ms`, which moves between two reads.
fn stable(mut v: Value) -> Value {
    fn walk(v: &mut Value) {
        match v {
            Value::Object(m) => {
                m.remove("time_left_ms");
                m.values_mut().for_each(walk);
            }
            Value::Array(a) => a.iter_mut().for_each(walk),
            _ => {}
        }
    }
    walk(&mut v);
    v
}

#[test]
fn the_api_answers_with_the_cli_shapes_and_enforces_tokens() {
    let app = app();
    let mut daemon = app.spawn_daemon_with(&["--log-format", "json"]);
    let base = base_url(&daemon);
    wait_until(Duration::from_secs(30), || {
        get(&base, "/api/v1/threads", Some(AGENT))
            .1
            .as_array()
            .is_some_and(|a| a.len() == 4)
    })
    .expect("the first poll's threads never showed");

    // Without a token, with an unknown one, with the wrong role.
    assert_error(
        &get(&base, "/api/v1/threads", None),
        401,
        "unauthorized",
        "Bearer",
    );
    assert_error(
        &get(&base, "/api/v1/threads", Some("nope")),
        401,
        "unauthorized",
        "unknown token",
    );
    assert_error(
        &get(&base, "/api/v1/threads", Some(METRICS)),
        403,
        "forbidden",
        "agent",
    );
    assert_error(
        &get(&base, "/api/v1/connectors", Some(AGENT)),
        403,
        "forbidden",
        "admin",
    );
    assert!(!daemon.log().contains(AGENT), "a token reached the log");

    // The same JSON as the CLI.
    let cli = |args: &[&str]| stable(app.json(args));
    assert_eq!(
        stable(get(&base, "/api/v1/threads", Some(AGENT)).1),
        cli(&["threads", "--json"])
    );
    assert_eq!(
        stable(
            get(
                &base,
                "/api/v1/threads?status=awaiting&channel=amazon&limit=2",
                Some(AGENT)
            )
            .1
        ),
        cli(&[
            "threads",
            "--status",
            "awaiting",
            "--channel",
            "amazon",
            "--limit",
            "2",
            "--json"
        ])
    );
    assert_eq!(
        stable(get(&base, "/api/v1/threads/1", Some(AGENT)).1),
        cli(&["show", "1", "--json"])
    );
    assert_eq!(
        get(&base, "/api/v1/stats?since=7d", Some(AGENT)).1,
        app.json(&["stats", "--since", "7d", "--json"])
    );
    assert_eq!(
        get(&base, "/api/v1/connectors", Some(ADMIN)).1,
        app.json(&["connectors", "list", "--json"])
    );

    // Bad input is a 400 naming the parameter; unknown things are 404.
    assert_error(
        &get(&base, "/api/v1/threads?status=late", Some(AGENT)),
        400,
        "bad_request",
        "\"status\"",
    );
    assert_error(
        &get(&base, "/api/v1/threads?due_within=soon", Some(AGENT)),
        400,
        "bad_request",
        "\"due_within\"",
    );
    assert_error(
        &get(&base, "/api/v1/threads?limit=0", Some(AGENT)),
        400,
        "bad_request",
        "\"limit\"",
    );
    assert_error(
        &get(&base, "/api/v1/threads?colour=red", Some(AGENT)),
        400,
        "bad_request",
        "\"colour\"",
    );
    assert_error(
        &get(&base, "/api/v1/threads/abc", Some(AGENT)),
        400,
        "bad_request",
        "\"id\"",
    );
    assert_error(
        &get(&base, "/api/v1/stats?since=forever", Some(AGENT)),
        400,
        "bad_request",
        "\"since\"",
    );
    assert_error(
        &get(&base, "/api/v1/threads/999999", Some(AGENT)),
        404,
        "not_found",
        "999999",
    );
    assert_error(
        &get(&base, "/api/v1/nothing-here", Some(AGENT)),
        404,
        "not_found",
        "openapi",
    );

    // A reply: 202 with the outbox id; the same Idempotency-Key queues one.
    let body = json!({"body": "Olá Ana, o pedido sai hoje."});
    let first = post(
        &base,
        "/api/v1/threads/1/reply",
        Some(AGENT),
        &[("Idempotency-Key", "k-1")],
        &body,
    );
    assert_eq!(first.0, 202, "{:?}", first.1);
    let outbox_id = first.1["outbox_id"].as_str().unwrap().to_owned();
    assert_eq!(first.1["state"], "queued");
    let again = post(
        &base,
        "/api/v1/threads/1/reply",
        Some(AGENT),
        &[("Idempotency-Key", "k-1")],
        &body,
    );
    assert_eq!(again.0, 202);
    assert_eq!(
        again.1["outbox_id"],
        outbox_id.as_str(),
        "the retry queued a second reply"
    );
    let other = post(
        &base,
        "/api/v1/threads/1/reply",
        Some(AGENT),
        &[("Idempotency-Key", "k-1")],
        &json!({"body": "something else"}),
    );
    assert_error(&other, 422, "refused", "Idempotency-Key");
    wait_until(Duration::from_secs(30), || {
        let show = get(&base, "/api/v1/threads/1", Some(AGENT)).1;
        show["outbox"]
            .as_array()
            .is_some_and(|o| o.len() == 1 && o[0]["state"] == "sent")
    })
    .expect("the reply was not sent exactly once");
    let show = app.json(&["show", "1", "--json"]);
    assert_eq!(show["outbox"][0]["id"], outbox_id.as_str());
    assert_eq!(show["status"], "answered");
    assert!(
        show["audit"].to_string().contains("ana"),
        "the token's name is the actor: {show}"
    );

    assert_error(
        &post(
            &base,
            "/api/v1/threads/2/reply",
            Some(AGENT),
            &[],
            &json!({}),
        ),
        400,
        "bad_request",
        "\"body\"",
    );
    assert_error(
        &post(
            &base,
            "/api/v1/threads/2/reply",
            Some(AGENT),
            &[],
            &json!({"template": "nope"}),
        ),
        400,
        "bad_request",
        "\"template\"",
    );
    assert_error(
        &post(
            &base,
            "/api/v1/threads/999999/reply",
            Some(AGENT),
            &[],
            &json!({"body": "hi"}),
        ),
        404,
        "not_found",
        "999999",
    );

    // Marks.
    let snoozed = post(
        &base,
        "/api/v1/threads/3/mark",
        Some(AGENT),
        &[],
        &json!({"snooze": "2h"}),
    );
    assert_eq!(snoozed.0, 200, "{:?}", snoozed.1);
    assert_eq!(snoozed.1["status"], "snoozed");
    let done = post(
        &base,
        "/api/v1/threads/4/mark",
        Some(AGENT),
        &[],
        &json!({"no_response_needed": true}),
    );
    assert_eq!(done.1["status"], "no_response_needed");
    assert_eq!(
        app.json(&["show", "4", "--json"])["status"],
        "no_response_needed"
    );
    assert_error(
        &post(
            &base,
            "/api/v1/threads/4/mark",
            Some(AGENT),
            &[],
            &json!({}),
        ),
        400,
        "bad_request",
        "no_response_needed",
    );
    assert_error(
        &post(
            &base,
            "/api/v1/threads/4/mark",
            Some(AGENT),
            &[],
            &json!({"snooze": "a while"}),
        ),
        400,
        "bad_request",
        "\"snooze\"",
    );

    // Health.
    assert_eq!(get(&base, "/healthz", None).0, 200);
    let ready = get(&base, "/readyz", None);
    assert_eq!(ready.0, 200, "{:?}", ready.1);
    assert_eq!(ready.1["store"]["ok"], true);
    assert_eq!(ready.1["instances"][0]["name"], "shop");
    assert_eq!(ready.1["instances"][0]["state"], "ok");
    assert!(ready.1["instances"][0]["last_poll_age_s"]
        .as_i64()
        .is_some());

    daemon.stop_cleanly();
}

/// Resolves `{"$ref": "#/components/schemas/X"}`.
fn resolve<'a>(doc: &'a Value, schema: &'a Value) -> &'a Value {
    match schema["$ref"].as_str() {
        Some(r) => resolve(
            doc,
            &doc["components"]["schemas"][r.trim_start_matches("#/components/schemas/")],
        ),
        None => schema,
    }
}

/// The property names a schema gives an object (allOf merged).
fn properties(doc: &Value, schema: &Value) -> Vec<String> {
    let schema = resolve(doc, schema);
    let mut out: Vec<String> = schema["properties"]
        .as_object()
        .map(|p| p.keys().cloned().collect())
        .unwrap_or_default();
    for part in schema["allOf"].as_array().into_iter().flatten() {
        out.extend(properties(doc, part));
    }
    out.sort();
    out
}

/// Checks `value` against `schema`: every object has exactly the
/// documented keys, arrays are arrays, and nested values recurse.
fn conforms(doc: &Value, schema: &Value, value: &Value, at: &str, problems: &mut Vec<String>) {
    let schema = resolve(doc, schema);
    if let Some(any) = schema["oneOf"].as_array() {
        if value.is_null() && any.iter().any(|s| s["type"] == "null") {
            return;
        }
        if let Some(s) = any.iter().find(|s| s["type"] != "null") {
            return conforms(doc, s, value, at, problems);
        }
    }
    let types: Vec<&str> = match &schema["type"] {
        Value::String(t) => vec![t.as_str()],
        Value::Array(a) => a.iter().filter_map(|t| t.as_str()).collect(),
        _ => vec![],
    };
    if value.is_null() {
        if !types.is_empty() && !types.contains(&"null") {
            problems.push(format!("{at}: null, documented as {types:?}"));
        }
        return;
    }
    if types.contains(&"array") {
        match value.as_array() {
            Some(items) => items.iter().enumerate().for_each(|(i, v)| {
                conforms(doc, &schema["items"], v, &format!("{at}[{i}]"), problems)
            }),
            None => problems.push(format!("{at}: not an array")),
        }
        return;
    }
    let props = properties(doc, schema);
    if props.is_empty() {
        if let (Some(extra), Some(obj)) = (schema.get("additionalProperties"), value.as_object()) {
            for (k, v) in obj {
                conforms(doc, extra, v, &format!("{at}.{k}"), problems);
            }
        }
        return;
    }
    let Some(obj) = value.as_object() else {
        problems.push(format!("{at}: not an object"));
        return;
    };
    let mut keys: Vec<String> = obj.keys().cloned().collect();
    keys.sort();
    if keys != props {
        problems.push(format!("{at}: keys {keys:?}, documented {props:?}"));
    }
    let schema_props = |k: &str| -> Option<Value> {
        let s = resolve(doc, schema);
        if let Some(p) = s["properties"].get(k) {
            return Some(p.clone());
        }
        s["allOf"]
            .as_array()?
            .iter()
            .find_map(|part| resolve(doc, part)["properties"].get(k).cloned())
    };
    for (k, v) in obj {
        if let Some(s) = schema_props(k) {
            conforms(doc, &s, v, &format!("{at}.{k}"), problems);
        }
    }
}

#[test]
fn the_openapi_document_describes_what_the_server_answers() {
    let app = app();
    let mut daemon = app.spawn_daemon_with(&["--log-format", "json"]);
    let base = base_url(&daemon);
    wait_until(Duration::from_secs(30), || {
        get(&base, "/api/v1/threads", Some(AGENT))
            .1
            .as_array()
            .is_some_and(|a| a.len() == 4)
    })
    .unwrap();
    let (status, doc) = get(&base, "/api/v1/openapi.json", None);
    assert_eq!(status, 200);
    assert!(doc["openapi"].as_str().unwrap().starts_with("3."));

    let mut problems = Vec::new();
    let mut check = |path: &str, method: &str, code: u16, got: &(u16, Value)| {
        assert_eq!(got.0, code, "{method} {path}: {:?}", got.1);
        let op = &doc["paths"][path.split('?').next().unwrap().replace("/1", "/{id}")][method];
        assert!(op.is_object(), "{method} {path} is not in the document");
        let schema = &op["responses"][code.to_string()]["content"]["application/json"]["schema"];
        assert!(schema.is_object(), "{method} {path}: no schema for {code}");
        conforms(
            &doc,
            schema,
            &got.1,
            &format!("{method} {path} {code}"),
            &mut problems,
        );
    };
    check(
        "/api/v1/threads",
        "get",
        200,
        &get(&base, "/api/v1/threads", Some(AGENT)),
    );
    check(
        "/api/v1/threads",
        "get",
        400,
        &get(&base, "/api/v1/threads?limit=x", Some(AGENT)),
    );
    check(
        "/api/v1/threads",
        "get",
        401,
        &get(&base, "/api/v1/threads", None),
    );
    check(
        "/api/v1/threads/1",
        "get",
        200,
        &get(&base, "/api/v1/threads/1", Some(AGENT)),
    );
    check(
        "/api/v1/threads/1",
        "get",
        404,
        &get(&base, "/api/v1/threads/999", Some(AGENT)),
    );
    check(
        "/api/v1/stats",
        "get",
        200,
        &get(&base, "/api/v1/stats", Some(AGENT)),
    );
    check(
        "/api/v1/connectors",
        "get",
        200,
        &get(&base, "/api/v1/connectors", Some(ADMIN)),
    );
    check(
        "/api/v1/connectors",
        "get",
        403,
        &get(&base, "/api/v1/connectors", Some(AGENT)),
    );
    check(
        "/api/v1/threads/1/reply",
        "post",
        202,
        &post(
            &base,
            "/api/v1/threads/1/reply",
            Some(AGENT),
            &[],
            &json!({"body": "hi"}),
        ),
    );
    check(
        "/api/v1/threads/1/reply",
        "post",
        400,
        &post(
            &base,
            "/api/v1/threads/1/reply",
            Some(AGENT),
            &[],
            &json!({}),
        ),
    );
    check(
        "/api/v1/threads/1/mark",
        "post",
        200,
        &post(
            &base,
            "/api/v1/threads/1/mark",
            Some(AGENT),
            &[],
            &json!({"snooze": "1h"}),
        ),
    );
    check(
        "/api/v1/threads/1/mark",
        "post",
        400,
        &post(
            &base,
            "/api/v1/threads/1/mark",
            Some(AGENT),
            &[],
            &json!({}),
        ),
    );
    assert!(
        problems.is_empty(),
        "the server answers differ from the document:\n{}",
        problems.join("\n")
    );

    // Every documented route exists.
    for (path, ops) in doc["paths"].as_object().unwrap() {
        for method in ops.as_object().unwrap().keys() {
            let url = format!("{base}{}", path.replace("{id}", "1"));
            let resp = common::http::client()
                .request(method.to_uppercase().parse().unwrap(), url)
                .bearer_auth(ADMIN)
                .json(&json!({}))
                .send()
                .unwrap();
            assert_ne!(resp.status().as_u16(), 405, "{method} {path}");
            assert!(
                resp.headers()["content-type"]
                    .to_str()
                    .unwrap()
                    .starts_with("application/json"),
                "{method} {path}"
            );
        }
    }
    daemon.stop_cleanly();
}

#[test]
fn sighup_reloads_the_tokens() {
    let app = app();
    let mut daemon = app.spawn_daemon_with(&["--log-format", "json"]);
    let base = base_url(&daemon);
    assert_eq!(get(&base, "/api/v1/stats", Some(AGENT)).0, 200);

    // Ana's token is revoked, a new one is given; a config error would keep the old.
    let text = std::fs::read_to_string(&app.config).unwrap();
    std::fs::write(
        &app.config,
        text.replace("env:TEST_TOKEN_AGENT", "file:agent-token-file")
            .replace(
                "listen = \"127.0.0.1:0\"",
                &format!("listen = \"{}\"", base.trim_start_matches("http://")),
            ),
    )
    .unwrap();
    let token_file = app.path().join("agent-token-file");
    std::fs::write(&token_file, "the-new-agent-token").unwrap();
    let text = std::fs::read_to_string(&app.config).unwrap();
    std::fs::write(
        &app.config,
        text.replace(
            "file:agent-token-file",
            &format!("file:{}", token_file.display()),
        ),
    )
    .unwrap();
    daemon.signal("HUP");
    wait_until(Duration::from_secs(30), || {
        matches!(
            common::http::client().get(format!("{base}/api/v1/stats")).bearer_auth("the-new-agent-token").send(),
            Ok(r) if r.status().as_u16() == 200
        )
    })
    .unwrap_or_else(|_| panic!("the new token never worked; log:\n{}", daemon.log()));
    assert_eq!(get(&base, "/api/v1/stats", Some(AGENT)).0, 401);
    assert!(!daemon.log().contains("the-new-agent-token"));
    daemon.stop_cleanly();
}

/// `hourglass demo` turns the server on and prints where, with a token
/// that works; Amazon's no-links rule refuses a reply up front (422).
#[test]
fn the_demo_prints_a_working_inbox_url_and_token() {
    use std::io::{BufRead, BufReader};
    /// Stops the demo also when an assertion fails.
    struct Demo(std::process::Child);
    impl Drop for Demo {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let mut demo = Demo(
        std::process::Command::new(common::BIN)
            .args(["demo", "--for", "120s"])
            .env_remove("HOURGLASS_CONFIG")
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap(),
    );
    let child = &mut demo.0;
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let api_line = lines
        .by_ref()
        .map_while(Result::ok)
        .find(|l| l.trim_start().starts_with("api "))
        .expect("the demo printed no API line");
    let token = api_line
        .split("Bearer ")
        .nth(1)
        .unwrap()
        .split('\'')
        .next()
        .unwrap()
        .to_owned();
    let url = api_line.split_whitespace().last().unwrap().to_owned();
    let base = url.trim_end_matches("/api/v1/threads").to_owned();
    std::thread::spawn(move || lines.for_each(drop));

    wait_until(Duration::from_secs(30), || {
        common::http::try_get(&base, "/api/v1/threads", Some(&token))
            .is_some_and(|(_, v)| v.as_array().is_some_and(|a| a.len() >= 7))
    })
    .expect("the demo's threads never showed through the API");
    let threads = get(&base, "/api/v1/threads", Some(&token)).1;
    let amazon = threads
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["instance"] == "amazon-eu" && t["status"] != "answered")
        .unwrap();
    let refused = post(
        &base,
        &format!("/api/v1/threads/{}/reply", amazon["id"]),
        Some(&token),
        &[],
        &json!({"body": "Details: https://demo-shop.example/returns"}),
    );
    assert_error(&refused, 422, "refused", "links");
    let show = get(
        &base,
        &format!("/api/v1/threads/{}", amazon["id"]),
        Some(&token),
    )
    .1;
    assert_eq!(show["outbox"].as_array().unwrap().len(), 0);

    let ok = std::process::Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(ok.success());
    assert!(child.wait().unwrap().success());
}

/// `/readyz` says 503 when the store stops answering; `/healthz` stays 200.
#[test]
fn readyz_is_503_when_the_store_does_not_answer() {
    let pg = hourglass_testsupport::postgres::Postgres::start().unwrap();
    let url = pg.create_database("ready").unwrap();
    let mut app = TestApp::new(Some(&url), HTTP_CONFIG);
    app.env = token_env();
    let mut daemon = app.spawn_daemon_with(&["--log-format", "json"]);
    let base = base_url(&daemon);
    let ready = get(&base, "/readyz", None);
    assert_eq!(ready.0, 200, "{:?}", ready.1);
    assert_eq!(ready.1["store"]["ok"], true);

    drop(pg);
    wait_until(Duration::from_secs(30), || {
        get(&base, "/readyz", None).0 == 503
    })
    .expect("readyz stayed 200 with the store gone");
    let ready = get(&base, "/readyz", None);
    assert_eq!(ready.1["ready"], false);
    assert_eq!(ready.1["store"]["ok"], false);
    assert!(ready.1["store"]["error"]
        .as_str()
        .is_some_and(|e| !e.is_empty()));
    assert_eq!(get(&base, "/healthz", None).0, 200);
    daemon.stop_cleanly();
}
