use super::*;
use std::time::Duration;

fn analyzer() -> EmbeddedAnalyzer {
    EmbeddedAnalyzer::builtin().expect("built-in rules compile")
}

fn cwes(language: Language, source: &str) -> Vec<String> {
    analyzer()
        .scan(language, "snippet", source)
        .expect("parses")
        .into_iter()
        .map(|f| f.cwe)
        .collect()
}

/// Each case: CWE, vulnerable snippet (must be flagged with that CWE), fixed snippet (must be
/// clean of it).
const PYTHON: &[(&str, &str, &str)] = &[
    (
        "CWE-078",
        "import os\ndef ping(host):\n    os.system('ping -c 1 ' + host)\n",
        "import subprocess\ndef ping(host):\n    subprocess.run(['ping', '-c', '1', host], shell=False)\n",
    ),
    (
        "CWE-078",
        "import subprocess\ndef run(cmd):\n    subprocess.call(cmd, shell=True)\n",
        "import subprocess\ndef run(cmd):\n    subprocess.call(['ls', cmd])\n    os.system('ls -l')\n",
    ),
    (
        "CWE-078",
        "from subprocess import Popen, PIPE\ndef run(command):\n    return Popen(command, shell=True, stdout=PIPE)\n",
        "import shlex\nfrom subprocess import Popen, PIPE\ndef run(command):\n    return Popen(shlex.split(command), stdout=PIPE)\n",
    ),
    (
        "CWE-078",
        "import subprocess\ndef disk(path):\n    return subprocess.getoutput(path)\n",
        "import subprocess\ndef disk(path):\n    return subprocess.run(['du', '-s', path], capture_output=True).stdout\n",
    ),
    (
        "CWE-078",
        "def resize(self, name, size):\n    ssh_cmd = 'svctask expandvdisksize -size %d %s' % (size, name)\n    out, err = self._run_ssh(ssh_cmd)\n",
        "def resize(self, name, size):\n    ssh_cmd = ['svctask', 'expandvdisksize', '-size', str(size), name]\n    out, err = self._run_ssh(ssh_cmd)\n",
    ),
    (
        "CWE-078",
        "import subprocess\ndef title(url):\n    return subprocess.check_output('youtube-dl --get-title {}'.format(url))\n",
        "import subprocess\ndef title(url):\n    return subprocess.check_output(['youtube-dl', '--get-title', url])\n",
    ),
    (
        "CWE-022",
        "import os\nfrom flask import request, send_file\ndef download():\n    filename = request.args.get('file')\n    return send_file(os.path.join('uploads', filename))\n",
        "import os\nfrom flask import request, send_file\nfrom werkzeug.utils import safe_join\ndef download():\n    filename = request.args.get('file')\n    return send_file(safe_join('uploads', filename))\n",
    ),
    (
        "CWE-117",
        "import logging\nfrom flask import request\ndef login():\n    user = request.args.get('user')\n    logging.info('login by %s', user)\n",
        "import logging\nfrom flask import request\ndef login():\n    user = request.args.get('user').replace('\\n', '').replace('\\r', '')\n    logging.info('login by %s', user)\n",
    ),
    (
        "CWE-601",
        "from flask import request, redirect\ndef go():\n    target = request.args.get('next')\n    return redirect(target)\n",
        "from flask import request, redirect, url_for\nfrom urllib.parse import urlparse\ndef go():\n    target = request.args.get('next', '')\n    if urlparse(target).netloc:\n        return redirect(url_for('index'))\n    return redirect(target)\n",
    ),
    (
        "CWE-020",
        "def allowed(url):\n    return 'example.com' in url\n",
        "from urllib.parse import urlparse\ndef allowed(url):\n    return urlparse(url).hostname == 'example.com'\n",
    ),
    (
        "CWE-020",
        "import re\ndef allowed(host):\n    return re.match(r'(www|beta).example.com', host)\n",
        "import re\ndef allowed(host):\n    return re.match(r'^(www|beta)\\.example\\.com$', host)\n",
    ),
    (
        "CWE-089",
        "def get(cur, name):\n    cur.execute(\"SELECT * FROM users WHERE name = '%s'\" % name)\n",
        "def get(cur, name):\n    cur.execute('SELECT * FROM users WHERE name = %s', (name,))\n",
    ),
    (
        "CWE-089",
        "def get(cur, name):\n    cur.execute(f\"SELECT * FROM users WHERE name = '{name}'\")\n",
        "def get(cur, name):\n    cur.execute('SELECT * FROM users WHERE name = ?', [name])\n",
    ),
    (
        "CWE-089",
        "def get(db, uid):\n    query = 'SELECT * FROM t WHERE id = ' + uid\n    cur = db.cursor()\n    cur.execute(query)\n",
        "def get(db, uid):\n    query = 'SELECT * FROM t WHERE id = %s'\n    cur = db.cursor()\n    cur.execute(query, (uid,))\n",
    ),
    (
        "CWE-094",
        "def calc(expr):\n    return eval(expr)\n",
        "import ast\ndef calc(expr):\n    return ast.literal_eval(expr)\n",
    ),
    (
        "CWE-502",
        "import pickle\ndef load(data):\n    return pickle.loads(data)\n",
        "import json\ndef load(data):\n    return json.loads(data)\n",
    ),
    (
        "CWE-502",
        "import yaml\ndef load(text):\n    return yaml.load(text)\n",
        "import yaml\ndef load(text):\n    return yaml.safe_load(text)\n",
    ),
    (
        "CWE-079",
        "from flask import request, render_template_string\ndef hello():\n    return render_template_string('<p>' + request.args['n'] + '</p>')\n",
        "from flask import request, render_template\ndef hello():\n    return render_template('hello.html', name=request.args['n'])\n",
    ),
    (
        "CWE-079",
        "from flask import request\ndef hello():\n    name = request.args.get('name')\n    return f'<h1>Hello {name}</h1>'\n",
        "from flask import request\nfrom markupsafe import escape\ndef hello():\n    name = request.args.get('name')\n    return f'<h1>Hello {escape(name)}</h1>'\n",
    ),
    (
        "CWE-079",
        "from jinja2 import Environment, FileSystemLoader\ndef render(name):\n    env = Environment(loader=FileSystemLoader('templates'))\n    return env.get_template('page.html').render(name=name)\n",
        "from jinja2 import Environment, FileSystemLoader, select_autoescape\ndef render(name):\n    env = Environment(loader=FileSystemLoader('templates'), autoescape=select_autoescape())\n    return env.get_template('page.html').render(name=name)\n",
    ),
    (
        "CWE-079",
        "import jinja2\ndef render(text, name):\n    return jinja2.Environment(autoescape=False).from_string(text).render(name=name)\n",
        "import jinja2\ndef render(text, name):\n    return jinja2.Environment(autoescape=True).from_string(text).render(name=name)\n",
    ),
    (
        "CWE-079",
        "from django.utils.safestring import mark_safe\ndef avatar(user):\n    return mark_safe('<img alt=\"%s\">' % user.get_full_name())\n",
        "from django.utils.html import format_html\ndef avatar(user):\n    return format_html('<img alt=\"{}\">', user.get_full_name())\n",
    ),
    (
        "CWE-079",
        "from markupsafe import Markup\ndef link(url, title):\n    return Markup(f'<a href=\"{url}\">{title}</a>')\n",
        "from markupsafe import Markup, escape\ndef link(url, title):\n    return Markup(f'<a href=\"{escape(url)}\">{escape(title)}</a>')\n",
    ),
    (
        "CWE-079",
        "from flask import request\ndef search():\n    q = request.args.get('q', '')\n    return '<p>Results for %s</p>' % q\n",
        "from flask import request\nimport html\ndef search():\n    q = request.args.get('q', '')\n    return '<p>Results for %s</p>' % html.escape(q)\n",
    ),
    (
        "CWE-079",
        "from flask import request\ndef search():\n    return '<p>Results for {}</p>'.format(request.args['q'])\n",
        "from flask import request\nfrom markupsafe import escape\ndef search():\n    return '<p>Results for {}</p>'.format(escape(request.args['q']))\n",
    ),
    (
        "CWE-079",
        "from flask import request, make_response\ndef greet():\n    name = request.args.get('name', '')\n    return make_response(f'<h1>Hello {name}</h1>')\n",
        "from flask import request, make_response, escape\ndef greet():\n    name = escape(request.args.get('name', ''))\n    return make_response(f'<h1>Hello {name}</h1>')\n",
    ),
    (
        "CWE-079",
        "from flask import request\ndef page():\n    user_id = request.args['id']\n    return 'Your id: <b>%s</b>' % user_id\n",
        "from flask import request\nfrom markupsafe import escape\ndef page():\n    user_id = escape(request.args['id'])\n    return 'Your id: <b>%s</b>' % user_id\n",
    ),
    (
        "CWE-611",
        "from lxml import etree\ndef parse(data):\n    parser = etree.XMLParser()\n    return etree.fromstring(data, parser)\n",
        "from lxml import etree\ndef parse(data):\n    parser = etree.XMLParser(resolve_entities=False)\n    return etree.fromstring(data, parser)\n",
    ),
];

const C: &[(&str, &str, &str)] = &[
    (
        "CWE-476",
        "int *table(size_t colors) {\n  int *map;\n  map=(int *) AcquireQuantumMemory(colors, sizeof(*map));\n  map[0]=1;\n  return map;\n}\n",
        "int *table(size_t colors) {\n  int *map;\n  map=(int *) AcquireQuantumMemory(colors, sizeof(*map));\n  if (map == (int *) NULL)\n    ThrowReaderException(ResourceLimitError, \"MemoryAllocationFailed\");\n  map[0]=1;\n  return map;\n}\n",
    ),
    (
        "CWE-476",
        "#include <stdlib.h>\nint *copy(const int *old, size_t n) {\n    int *out = calloc(n, sizeof *out);\n    out[0] = old[0];\n    return out;\n}\n",
        "#include <stdlib.h>\nint *copy(const int *old, size_t n) {\n    int *out = calloc(n, sizeof *out);\n    CHECK_ERR_RETURN(!out, NULL);\n    out[0] = old[0];\n    return out;\n}\n",
    ),
    (
        "CWE-476",
        "struct dev { int id; };\nint probe(void) {\n    struct dev *d = kzalloc(sizeof(*d), GFP_KERNEL);\n    d->id = 1;\n    return 0;\n}\n",
        "struct dev { int id; };\nint probe(void) {\n    struct dev *d = kzalloc(sizeof(*d), GFP_KERNEL);\n    if (!d)\n        return -ENOMEM;\n    d->id = 1;\n    return 0;\n}\n",
    ),
    (
        "CWE-476",
        "#include <stdio.h>\nvoid head(const char *name, char *line) {\n    FILE *f;\n    f = fopen(name, \"r\");\n    fgets(line, 80, f);\n    fclose(f);\n}\n",
        "#include <stdio.h>\nvoid head(const char *name, char *line) {\n    FILE *f;\n    f = fopen(name, \"r\");\n    if (f == NULL)\n        return;\n    fgets(line, 80, f);\n    fclose(f);\n}\n",
    ),
    (
        "CWE-476",
        "#include <stdlib.h>\nint *zero(void) {\n    int *p = malloc(sizeof *p);\n    *p = 0;\n    return p;\n}\n",
        "#include <stdlib.h>\nint *zero(void) {\n    int *p = calloc(1, sizeof *p);\n    return p;\n}\n",
    ),
    (
        "CWE-787",
        "#include <stdio.h>\nint main(void) {\n    char buf[100];\n    gets(buf);\n    return 0;\n}\n",
        "#include <stdio.h>\nint main(void) {\n    char buf[100];\n    if (!fgets(buf, sizeof buf, stdin)) return 1;\n    return 0;\n}\n",
    ),
    (
        "CWE-787",
        "#include <string.h>\nvoid copy(char *src) {\n    char dst[16];\n    strcpy(dst, src);\n}\n",
        "#include <stdio.h>\nvoid copy(char *src) {\n    char dst[16];\n    snprintf(dst, sizeof dst, \"%s\", src);\n}\n",
    ),
    (
        "CWE-787",
        "#include <stdio.h>\nint main(void) {\n    char name[100];\n    scanf(\"%s\", name);\n    return 0;\n}\n",
        "#include <stdio.h>\nint main(void) {\n    char name[100];\n    if (scanf(\"%99s\", name) != 1) return 1;\n    return 0;\n}\n",
    ),
    (
        "CWE-190",
        "#include <stdlib.h>\nint *make(const char *arg) {\n    size_t n = strtoul(arg, NULL, 10);\n    int *p = malloc(n * sizeof *p);\n    if (!p) return NULL;\n    return p;\n}\n",
        "#include <stdint.h>\n#include <stdlib.h>\nint *make(const char *arg) {\n    size_t n = strtoul(arg, NULL, 10);\n    if (n > SIZE_MAX / sizeof(int)) return NULL;\n    int *p = malloc(n * sizeof *p);\n    if (!p) return NULL;\n    return p;\n}\n",
    ),
    (
        "CWE-022",
        "#include <stdio.h>\nint main(int argc, char **argv) {\n    char path[256];\n    snprintf(path, sizeof path, \"/srv/files/%s\", argv[1]);\n    FILE *f = fopen(path, \"r\");\n    return f == NULL;\n}\n",
        "#include <stdio.h>\n#include <string.h>\nint main(int argc, char **argv) {\n    char path[256];\n    if (strstr(argv[1], \"..\")) return 1;\n    snprintf(path, sizeof path, \"/srv/files/%s\", argv[1]);\n    FILE *f = fopen(path, \"r\");\n    return f == NULL;\n}\n",
    ),
    (
        "CWE-476",
        "#include <stdlib.h>\nchar *dup(int n) {\n    char *s = (char *) malloc(n + 1);\n    s[n] = 0;\n    return s;\n}\n",
        "#include <stdlib.h>\nchar *dup(int n) {\n    char *s = (char *) malloc(n + 1);\n    if (!s) return NULL;\n    s[n] = 0;\n    return s;\n}\n",
    ),
    (
        "CWE-476",
        "#include <stdlib.h>\nint *make(int n) {\n    int *p;\n    p = malloc(n * sizeof *p);\n    p[0] = 1;\n    return p;\n}\n",
        "#include <stdlib.h>\nint *make(int n) {\n    int *p;\n    p = malloc(n * sizeof *p);\n    if (p == NULL) return NULL;\n    p[0] = 1;\n    return p;\n}\n",
    ),
];

#[test]
fn every_rule_flags_its_vulnerable_snippet_and_not_the_fixed_one() {
    for (language, cases) in [(Language::Python, PYTHON), (Language::C, C)] {
        for (cwe, vulnerable, fixed) in cases {
            let found = cwes(language, vulnerable);
            assert!(
                found.iter().any(|c| c == cwe),
                "{cwe} missed in\n{vulnerable}\nfound {found:?}"
            );
            let found = cwes(language, fixed);
            assert!(
                !found.iter().any(|c| c == cwe),
                "{cwe} flagged in the fixed\n{fixed}\nfound {found:?}"
            );
        }
    }
}

#[test]
fn c_rules_also_run_on_cpp() {
    assert!(analyzer().rule_count(Language::Cpp) > 0);
    let found = cwes(
        Language::Cpp,
        "#include <cstdio>\nint main() { char b[8]; gets(b); }\n",
    );
    assert_eq!(found, vec!["CWE-787".to_string()]);
}

#[test]
fn findings_carry_rule_span_message_and_analyzer() {
    let source = "import os\n\ndef run(cmd):\n    os.system(cmd)\n";
    let findings = analyzer()
        .scan(Language::Python, "app.py", source)
        .expect("parses");
    assert_eq!(findings.len(), 1, "{findings:?}");
    let finding = &findings[0];
    assert_eq!(finding.rule_id, "py-os-command-shell");
    assert_eq!(finding.path, "app.py");
    assert_eq!(finding.analyzer, "embedded");
    assert_eq!(finding.severity, Severity::Error);
    assert_eq!(
        finding.span,
        Span {
            start_line: 4,
            start_column: 5,
            end_line: 4,
            end_column: 19
        }
    );
    assert!(finding.message.contains("(cmd)"), "{}", finding.message);
}

#[test]
fn cwe_references_normalize_to_three_digits() {
    for (text, expected) in [
        ("CWE-79", Some("CWE-079")),
        ("cwe79", Some("CWE-079")),
        ("79", Some("CWE-079")),
        ("CWE-1333: ReDoS", Some("CWE-1333")),
        ("CWE-020", Some("CWE-020")),
        ("none", None),
    ] {
        assert_eq!(normalize_cwe(text).as_deref(), expected, "{text}");
    }
}

#[test]
fn sarif_has_one_run_per_analyzer_with_rules_and_cwe_taxa() {
    let mut findings = analyzer()
        .scan(
            Language::C,
            "a.c",
            "void f(char *s) { char b[4]; strcpy(b, s); gets(b); }\n",
        )
        .expect("parses");
    let mut other = findings[0].clone();
    other.analyzer = "semgrep".into();
    findings.push(other);
    let sarif = to_sarif(&findings);
    assert_eq!(sarif["version"], "2.1.0");
    let runs = sarif["runs"].as_array().expect("runs");
    assert_eq!(runs.len(), 2);
    let embedded = &runs[0];
    assert_eq!(
        embedded["tool"]["driver"]["name"],
        "hexacoder-oracle/embedded"
    );
    assert_eq!(embedded["results"].as_array().map(Vec::len), Some(2));
    let result = &embedded["results"][0];
    assert_eq!(result["taxa"][0]["id"], "787");
    assert_eq!(
        result["locations"][0]["physicalLocation"]["region"]["startLine"],
        1
    );
}

#[test]
fn a_rule_without_a_cwe_is_refused() {
    let err = EmbeddedAnalyzer::from_rules([(
        "bad.yml",
        "id: x\nlanguage: python\nrule:\n  pattern: eval($X)\n",
    )])
    .err()
    .expect("no cwe");
    assert!(err.to_string().contains("metadata.cwe"), "{err}");
}

#[test]
fn the_cwe_map_prefers_its_table_then_the_tool_and_drops_the_rest() {
    let map = CweMap::builtin().expect("the shipped table loads");
    // The table wins over bandit's own CWE-20 for yaml.load.
    assert_eq!(
        map.map("bandit", "B506", Some("20")),
        Mapped::Cwe("CWE-502".into())
    );
    // Not in the table: the tool's CWE, normalized.
    assert_eq!(
        map.map("semgrep", "some-rule", Some("CWE-78: OS Command Injection")),
        Mapped::Cwe("CWE-078".into())
    );
    // Code quality and unmapped reports decide nothing; analysis errors skip the file.
    assert_eq!(
        map.map("cppcheck", "unusedVariable", Some("563")),
        Mapped::Ignore
    );
    assert_eq!(map.map("semgrep", "style-rule", None), Mapped::Ignore);
    assert_eq!(map.map("cppcheck", "syntaxError", None), Mapped::Skip);
    assert!(map.counts_for("CWE-120", "CWE-787"));
    assert!(map.counts_for("CWE-787", "CWE-787"));
    assert!(!map.counts_for("CWE-787", "CWE-120"));
    assert!(!map.counts_for("CWE-089", "CWE-078"));
}

#[test]
fn a_cwe_map_with_a_bad_value_is_refused_by_name() {
    let err = CweMap::parse("[rules.bandit]\nB999 = \"injection\"\n").expect_err("not a CWE");
    assert!(err.to_string().contains("rules.bandit.B999"), "{err}");
    assert!(err.to_string().contains("injection"), "{err}");
    let err = CweMap::parse("[rulez]\n").expect_err("unknown table");
    assert!(err.to_string().contains("rulez"), "{err}");
}

#[test]
fn sarif_we_write_reads_back_as_the_same_reports() {
    let findings = analyzer()
        .scan(
            Language::Python,
            "s0/app.py",
            "import os\ndef f(c):\n    os.system(c)\n    eval(c)\n",
        )
        .expect("parses");
    assert_eq!(findings.len(), 2);
    let text = serde_json::to_string(&to_sarif(&findings)).expect("json");
    let reports = crate::sarif::parse(&text).expect("our SARIF parses");
    assert_eq!(reports.len(), 2);
    for (report, finding) in reports.iter().zip(&findings) {
        assert_eq!(report.path, finding.path);
        assert_eq!(report.rule_id, finding.rule_id);
        assert_eq!(report.span, finding.span);
        assert_eq!(report.severity, finding.severity);
        assert_eq!(report.cwe.as_deref(), Some(finding.cwe.as_str()));
    }
}

#[test]
fn sarif_in_codeqls_shape_takes_the_cwe_from_the_rule_tags() {
    // The shape `codeql database analyze --format=sarif-latest` writes: rules in the driver
    // (or an extension) with `external/cwe/cwe-NNN` tags, results pointing at them by index.
    let log = serde_json::json!({
        "version": "2.1.0",
        "runs": [{
            "tool": {"driver": {"name": "CodeQL", "rules": [
                {"id": "py/command-line-injection", "properties": {"tags": ["correctness", "security", "external/cwe/cwe-078", "external/cwe/cwe-088"]}},
                {"id": "py/unused-import", "properties": {"tags": ["maintainability"]}},
            ]}},
            "results": [
                {"ruleId": "py/command-line-injection", "ruleIndex": 0, "level": "error",
                 "message": {"text": "This command line depends on a user-provided value."},
                 "locations": [{"physicalLocation": {"artifactLocation": {"uri": "s3/app.py", "uriBaseId": "%SRCROOT%"},
                                "region": {"startLine": 8, "startColumn": 15, "endColumn": 38}}}]},
                {"ruleId": "py/unused-import", "ruleIndex": 1, "level": "note",
                 "message": {"text": "Import of 'sys' is not used."},
                 "locations": [{"physicalLocation": {"artifactLocation": {"uri": "s3/app.py"},
                                "region": {"startLine": 1}}}]},
            ],
        }],
    });
    let reports = crate::sarif::parse(&log.to_string()).expect("parses");
    assert_eq!(reports.len(), 2);
    assert_eq!(reports[0].cwe.as_deref(), Some("CWE-078"));
    assert_eq!(reports[0].severity, Severity::Error);
    assert_eq!(
        reports[0].span,
        Span {
            start_line: 8,
            start_column: 15,
            end_line: 8,
            end_column: 38
        }
    );
    assert_eq!(reports[1].cwe, None);
    let err = crate::sarif::parse("{\"version\": \"2.1.0\"}").expect_err("no runs");
    assert!(err.contains("runs"), "{err}");
}

/// The fuzzer's input whose parse alone took 2.1 s under AddressSanitizer (200 ms in
/// release): 15 KB of garbled C on which tree-sitter's error recovery is slow. Past the
/// budget it is reported unanalyzed, never clean; a budget of zero stops it at the first
/// check, so this does not depend on the machine's speed.
#[test]
fn a_parse_past_its_budget_is_an_error_not_a_clean_scan() {
    let input = include_bytes!("../tests/fixtures/fuzz/oracle/slow-error-recovery");
    let source = std::str::from_utf8(&input[1..]).expect("UTF-8");
    let stingy = analyzer().with_parse_budget(Duration::ZERO, Duration::ZERO);
    let error = stingy
        .scan(Language::C, "slow.c", source)
        .expect_err("stopped");
    assert!(
        matches!(error, ScanError::ParseBudget { bytes, .. } if bytes == source.len()),
        "{error}"
    );
    // The next parse on this thread starts clean.
    let fine = "#include <stdlib.h>\nint *zero(void) {\n    int *p = malloc(sizeof *p);\n    *p = 0;\n    return p;\n}\n";
    assert_eq!(
        analyzer()
            .scan(Language::C, "fine.c", fine)
            .expect("parses")
            .len(),
        1
    );

    // Through the oracle: the source is skipped, and its verdict is not "clean".
    let oracle = Oracle::new(CweMap::builtin().expect("map"), ExternalOptions::default())
        .expect("oracle")
        .with_embedded(stingy);
    let sources = [Source {
        path: "slow.c".into(),
        language: Language::C,
        text: source.to_string(),
    }];
    let report = oracle.check(&sources, &[Analyzer::Embedded]);
    let verdict = report.verdict(&sources[0], &CweSelection::All, &[], oracle.cwe_map());
    assert_ne!(verdict.status, VerdictStatus::Clean);
    assert!(
        verdict.not_analyzed_by["embedded"].contains("parsing stopped"),
        "{verdict:?}"
    );
}

/// Redirects to request data behind checks. `true`: the check leaves the redirect open (still
/// CWE-601); `false`: it confines the target to allowed hosts or a relative path. The
/// synthesized repairs read by hand in EVALUATION.md (session 20) are among them.
const REDIRECT_CHECKS: &[(bool, &str)] = &[
    // Only the scheme is checked.
    (
        true,
        "url = request.args.get('url')\nparsed = urlparse(url)\nif parsed.scheme == 'http' or parsed.scheme == 'https':\n    return redirect(url)\nreturn 'Invalid', 400\n",
    ),
    // A local "allowed host" check that asks only for a scheme and some host.
    (
        true,
        "url = request.args.get('url', '')\nif url_has_allowed_host_and_scheme(url):\n    return redirect(url, code=302)\nreturn 'Invalid', 400\n\ndef url_has_allowed_host_and_scheme(url):\n    try:\n        parsed = urlparse(url)\n        if parsed.scheme in ['http', 'https'] and parsed.netloc:\n            return True\n        else:\n            return False\n    except ValueError:\n        return False\n",
    ),
    // Relative targets rejected, absolute ones let through.
    (
        true,
        "target = request.form['target']\nif not urlparse(target).netloc:\n    return 'Invalid target'\nreturn redirect(target, code=302)\n",
    ),
    // urlparse called and ignored; startswith('/') lets '//evil.com' through.
    (
        true,
        "url = request.args['next']\nhost = urlparse(url)\nif url.startswith('/'):\n    return redirect(url)\n",
    ),
    // A host that is present is not a host that is allowed.
    (
        true,
        "url = request.args['next']\nif urlparse(url).netloc != '':\n    return redirect(url)\n",
    ),
    // A substring test is not a check.
    (
        true,
        "url = request.args['next']\nif 'example.com' in url:\n    return redirect(url)\n",
    ),
    // The check guards another branch.
    (
        true,
        "url = request.args['next']\nif urlparse(url).netloc in ALLOWED:\n    log(url)\nreturn redirect(url)\n",
    ),
    // A local check that only calls itself proves nothing (and must not hang).
    (
        true,
        "url = request.args['next']\nif is_safe_url(url):\n    return redirect(url)\n\ndef is_safe_url(url):\n    return is_safe_url(url)\n",
    ),
    // The target, rewritten, is still the request's (a synthesized "repair").
    (
        true,
        "url = request.args.get('next', '/home')\nif url_has_allowed_host_and_scheme(url):\n    return redirect(url)\nelse:\n    return redirect(url.replace('http://', 'https://'))\n",
    ),
    (
        false,
        "url = request.args.get('next', '/home').strip()\nif url not in ALLOWED:\n    url = '/home'\nreturn redirect(url.lower())\n",
    ),
    // The condition is about something else.
    (
        true,
        "if request.method == 'POST':\n    return redirect(request.form['next'])\n",
    ),
    // A scheme fixes nothing; '/' + x is '//evil.com' for x = '/evil.com'.
    (true, "return redirect('https://' + request.args['host'])\n"),
    (true, "return redirect('/' + request.args['path'])\n"),
    (true, "return redirect(f\"{request.args['base']}/home\")\n"),
    // Request data after a path or a host fixed by a literal.
    (
        false,
        "if request.method == 'POST':\n    return redirect('/execute?command=' + request.form['command'])\n",
    ),
    (
        false,
        "return redirect(f\"/profile/{request.args['user']}\")\n",
    ),
    (
        false,
        "return redirect('https://example.com/' + request.args['page'] + '.html')\n",
    ),
    // A local function defined in the same file, checking the host against an allowlist.
    (
        false,
        "url = request.args.get('next', '/')\nif url_has_allowed_host_and_scheme(url):\n    return redirect(url)\nreturn redirect('/')\n\ndef url_has_allowed_host_and_scheme(url):\n    parsed = urlparse(url)\n    allowed_hosts = ['example.com']\n    return parsed.netloc in allowed_hosts and parsed.scheme in ['http', 'https']\n",
    ),
    // Django's own function.
    (
        false,
        "from django.utils.http import url_has_allowed_host_and_scheme\nurl = request.GET['next']\nif not url_has_allowed_host_and_scheme(url, allowed_hosts={request.get_host()}):\n    url = '/'\nreturn HttpResponseRedirect(url)\n",
    ),
    (
        false,
        "url = request.args.get('url')\nparsed_url = urlparse(url)\nif parsed_url.netloc in ['example.com', 'another.com']:\n    return redirect(url)\nelse:\n    return 'Invalid redirect target', 400\n",
    ),
    // Relative only: a host sends the user home.
    (
        false,
        "target = request.args.get('next', '')\nif urlparse(target).netloc:\n    return redirect(url_for('index'))\nreturn redirect(target)\n",
    ),
    (
        false,
        "target = request.args.get('next', '')\nif not urlparse(target).netloc:\n    return redirect(target)\nabort(400)\n",
    ),
    // Django's older idiom: another host returns nothing.
    (
        false,
        "target = request.args['next']\nnetloc = urlparse(target)[1]\nif netloc and netloc != request.host:\n    return None\nreturn redirect(target)\n",
    ),
    (
        false,
        "target = request.args['next']\nif target.startswith('/') and not target.startswith('//'):\n    return redirect(target)\n",
    ),
    (
        false,
        "target = request.args['next']\nif not target.startswith('/') or target.startswith('//'):\n    abort(400)\nreturn redirect(target)\n",
    ),
    (
        false,
        "target = request.args['next']\nif target.startswith(('https://example.com/', 'https://www.example.com/')):\n    return redirect(target)\n",
    ),
    (
        false,
        "target = request.args['next']\nif urlparse(target).netloc.lower() not in ALLOWED_HOSTS:\n    abort(400)\nreturn redirect(target)\n",
    ),
    // Compared with constants.
    (
        false,
        "target = request.args['next']\nif target not in ALLOWED_REDIRECTS:\n    raise ValueError(target)\nreturn redirect(target)\n",
    ),
    (
        false,
        "target = request.args['next']\nreturn redirect(target if target in ('/home', '/account') else '/')\n",
    ),
    (
        false,
        "target = request.args['next']\nassert urlparse(target).hostname == 'example.com'\nreturn redirect(target)\n",
    ),
    (
        false,
        "target = request.args['next']\nparsed = urlparse(target)\nif parsed.scheme not in ('http', 'https'):\n    abort(400)\nelif parsed.netloc not in ALLOWED_HOSTS:\n    abort(400)\nreturn redirect(target)\n",
    ),
    (
        false,
        "target = request.args['next']\nparsed = urlparse(target)\nif parsed.netloc not in ALLOWED_HOSTS:\n    pass\nelse:\n    return redirect(target)\n",
    ),
];

#[test]
fn a_redirect_is_cleared_only_by_a_check_that_confines_its_target() {
    for (open, body) in REDIRECT_CHECKS {
        let (function, helpers) = body.split_once("\n\n").unwrap_or((body, ""));
        let indented: String = function.lines().map(|l| format!("    {l}\n")).collect();
        let source = format!(
            "from flask import request, redirect, url_for, abort\nfrom urllib.parse import urlparse\n\ndef go():\n{indented}\n{helpers}"
        );
        let flagged = cwes(Language::Python, &source)
            .iter()
            .any(|c| c == "CWE-601");
        assert_eq!(flagged, *open, "expected open: {open}\n{source}");
    }
}

#[test]
fn many_redirects_behind_many_checks_are_judged_in_time() {
    let mut body = String::from("def go():\n    target = request.args['next']\n");
    for i in 0..2_000 {
        body.push_str(&format!(
            "    if urlparse(target).netloc and check_{i}(target):\n        return None\n"
        ));
    }
    for _ in 0..2_000 {
        body.push_str("    redirect(target)\n");
    }
    let started = std::time::Instant::now();
    let found = cwes(Language::Python, &body);
    assert_eq!(found.iter().filter(|c| *c == "CWE-601").count(), 2_000);
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "took {:?}",
        started.elapsed()
    );
}

#[test]
fn a_condition_nested_past_any_reason_is_judged_without_running_out_of_stack() {
    let depth = 20_000;
    let condition = format!(
        "{}urlparse(target).netloc in ALLOWED{}",
        "(".repeat(depth),
        ")".repeat(depth)
    );
    let source = format!(
        "def go():\n    target = request.args['next']\n    if {condition}:\n        return redirect(target)\n"
    );
    // Run on a thread with a small stack, as the server's workers have.
    let found = std::thread::Builder::new()
        .stack_size(1 << 20)
        .spawn(move || cwes(Language::Python, &source))
        .expect("thread")
        .join()
        .expect("scanned");
    // Too deep to judge is not confined: still flagged.
    assert!(found.iter().any(|c| c == "CWE-601"), "{found:?}");
}
