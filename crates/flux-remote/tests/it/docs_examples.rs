//! Keeps `docs/api.md` honest: every `curl` example is sent to the in-process router as written
//! and must get the status (and code, param, replay header) of its `# expect:` line; the JSON
//! example bodies must parse as the types they show.
#![allow(clippy::unwrap_used)]

use crate::support::*;
use axum::body::Body;
use axum::http::Request;
use flux_remote::router;
use flux_types::{ErrorBody, GenerateResponse};
use tower::ServiceExt;

const API_MD: &str = include_str!("../../../../docs/api.md");

/// A fenced block: its info string and its lines.
struct Block {
    info: String,
    lines: Vec<String>,
}

fn fenced_blocks(markdown: &str) -> Vec<Block> {
    let mut blocks = Vec::new();
    let mut current: Option<Block> = None;
    for line in markdown.lines() {
        match (&mut current, line.strip_prefix("```")) {
            (None, Some(info)) => {
                current = Some(Block {
                    info: info.trim().to_owned(),
                    lines: Vec::new(),
                })
            }
            (Some(_), Some(_)) => blocks.push(current.take().unwrap()),
            (Some(block), None) => block.lines.push(line.to_owned()),
            (None, None) => {}
        }
    }
    assert!(
        current.is_none(),
        "unterminated fenced block in docs/api.md"
    );
    blocks
}

/// What a `# expect: <status> [code [param]] | replayed` line asks for.
#[derive(Debug)]
struct Expect {
    status: u16,
    code: Option<String>,
    param: Option<String>,
    replayed: bool,
}

#[derive(Debug)]
struct CurlExample {
    expect: Expect,
    method: String,
    target: String,
    headers: Vec<(String, String)>,
    body: Option<String>,
}

/// Splits a shell line into words, honouring double and single quotes (enough for the examples).
fn shell_words(line: &str) -> Vec<String> {
    let mut words = Vec::new();
    let mut word = String::new();
    let mut quote: Option<char> = None;
    let mut in_word = false;
    for c in line.chars() {
        match quote {
            Some(q) if c == q => quote = None,
            Some(_) => word.push(c),
            None if c == '"' || c == '\'' => {
                quote = Some(c);
                in_word = true;
            }
            None if c.is_whitespace() => {
                if in_word {
                    words.push(std::mem::take(&mut word));
                    in_word = false;
                }
            }
            None => {
                word.push(c);
                in_word = true;
            }
        }
    }
    if in_word {
        words.push(word);
    }
    words
}

fn parse_curl(block: &Block) -> CurlExample {
    let mut expect = None;
    let mut command = String::new();
    let mut body_lines: Option<Vec<String>> = None;
    let mut heredoc_end: Option<String> = None;
    for line in &block.lines {
        if let Some(end) = &heredoc_end {
            if line.trim() == end {
                heredoc_end = None;
            } else {
                body_lines.get_or_insert_with(Vec::new).push(line.clone());
            }
            continue;
        }
        if let Some(rest) = line.trim().strip_prefix("# expect:") {
            let words: Vec<&str> = rest.split_whitespace().collect();
            let status = words[0].parse().unwrap();
            let replayed = words.get(1) == Some(&"replayed");
            expect = Some(Expect {
                status,
                code: (!replayed)
                    .then(|| words.get(1).map(|w| w.to_string()))
                    .flatten(),
                param: words.get(2).map(|w| w.to_string()),
                replayed,
            });
            continue;
        }
        let mut text = line.trim_end().trim_end_matches('\\').to_owned();
        if let Some(at) = text.find("<<'") {
            let end = text[at + 3..].trim_end_matches('\'').to_owned();
            heredoc_end = Some(end);
            body_lines = Some(Vec::new());
            text.truncate(at);
        }
        command.push_str(&text);
        command.push(' ');
    }
    assert!(heredoc_end.is_none(), "unterminated here-document");
    let words = shell_words(&command);
    assert_eq!(words.first().map(String::as_str), Some("curl"), "{command}");
    let mut method = None;
    let mut target = None;
    let mut headers = Vec::new();
    let mut sends_body = false;
    let mut i = 1;
    while i < words.len() {
        let word = words[i].as_str();
        match word {
            "-H" | "--header" => {
                let (name, value) = words[i + 1].split_once(':').unwrap();
                headers.push((name.trim().to_owned(), value.trim().to_owned()));
                i += 1;
            }
            "-X" | "--request" => {
                method = Some(words[i + 1].clone());
                i += 1;
            }
            "--data-binary" | "-d" | "--data" => {
                assert_eq!(words[i + 1], "@-", "bodies come from the here-document");
                sends_body = true;
                i += 1;
            }
            "-o" | "--output" => i += 1,
            flag if flag.starts_with('-') => {}
            url => {
                assert!(target.is_none(), "one URL per example: {command}");
                target = Some(url.to_owned());
            }
        }
        i += 1;
    }
    let body = body_lines.map(|lines| lines.join("\n"));
    assert_eq!(
        sends_body,
        body.is_some(),
        "--data-binary @- goes with a here-document"
    );
    let method = method.unwrap_or_else(|| if sends_body { "POST" } else { "GET" }.to_owned());
    CurlExample {
        expect: expect.unwrap_or_else(|| panic!("curl example without '# expect:': {command}")),
        method,
        target: target.unwrap(),
        headers,
        body,
    }
}

#[tokio::test]
async fn every_curl_example_in_api_md_gets_its_documented_answer() {
    let dir = tempfile::tempdir().unwrap();
    let generator = fake();
    let app = router(state(&config(dir.path()), generator.clone()));
    let mut image_url: Option<String> = None;
    let mut checked = 0;
    for block in fenced_blocks(API_MD) {
        if block.info != "sh" || !block.lines.iter().any(|l| l.contains("curl ")) {
            continue;
        }
        let example = parse_curl(&block);
        let target = if example.target == "$IMAGE_URL" {
            image_url
                .clone()
                .expect("$IMAGE_URL is used after a 200 generation")
        } else {
            example.target.clone()
        };
        let path = target
            .strip_prefix("http://localhost:8080")
            .or_else(|| target.strip_prefix(PUBLIC_URL))
            .unwrap_or_else(|| panic!("examples talk to http://localhost:8080: {target}"));
        let mut request = Request::builder().method(example.method.as_str()).uri(path);
        for (name, value) in &example.headers {
            request = request.header(name, value.replace("$FLUX_API_KEY", KEY));
        }
        let body = example
            .body
            .clone()
            .map(Body::from)
            .unwrap_or_else(Body::empty);
        let response = app
            .clone()
            .oneshot(request.body(body).unwrap())
            .await
            .unwrap();
        let status = response.status().as_u16();
        let replayed = response.headers().get("idempotent-replayed").is_some();
        let bytes = body_bytes(response).await;
        let text = String::from_utf8_lossy(&bytes).into_owned();
        assert_eq!(status, example.expect.status, "{example:?}\nanswer: {text}");
        assert_eq!(replayed, example.expect.replayed, "{example:?}");
        if let Some(code) = &example.expect.code {
            let error: ErrorBody = serde_json::from_slice(&bytes).unwrap();
            let actual = serde_json::to_value(error.error.code).unwrap();
            assert_eq!(actual, code.as_str(), "{example:?}");
            assert_eq!(
                error.error.param.as_deref(),
                example.expect.param.as_deref()
            );
        }
        if status == 200 && path == flux_remote::GENERATE_PATH {
            let response: GenerateResponse = serde_json::from_slice(&bytes).unwrap();
            let url = &response.images[0].url;
            if !url.starts_with("data:") && image_url.is_none() {
                image_url = Some(url.clone());
            }
        }
        checked += 1;
    }
    assert!(
        checked >= 12,
        "only {checked} curl examples found in docs/api.md"
    );
}

#[test]
fn json_examples_parse_as_the_types_they_show() {
    let mut seen = (0, 0);
    for block in fenced_blocks(API_MD) {
        let text = block.lines.join("\n");
        match block.info.as_str() {
            "json response" => {
                let response: GenerateResponse = serde_json::from_str(&text).unwrap();
                assert_eq!(response.images.len(), response.has_nsfw_concepts.len());
                seen.0 += 1;
            }
            "json error" => {
                let _: ErrorBody = serde_json::from_str(&text).unwrap();
                seen.1 += 1;
            }
            _ => {}
        }
    }
    assert!(seen.0 >= 1 && seen.1 >= 1, "examples missing: {seen:?}");
}
