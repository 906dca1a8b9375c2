use super::*;

fn texts(block: &ImportBlock) -> Vec<&str> {
    block.imports.iter().map(|i| i.text.as_str()).collect()
}

#[test]
fn python_blocks_with_headers_future_parentheses_and_try() {
    let source = "#!/usr/bin/env python3\n\"\"\"Tool.\"\"\"\n# comment\nfrom __future__ import annotations\nimport os, sys\nfrom typing import (\n    Any,\n    Dict,\n)\ntry:\n    import ujson as json\nexcept ImportError:\n    import json\n\nimport re\nx = 1\nimport late\n";
    let block = ImportBlock::find(Language::Python, source);
    assert_eq!(
        texts(&block),
        [
            "from __future__ import annotations",
            "import os, sys",
            "from typing import (\n    Any,\n    Dict,\n)",
            "import ujson as json",
            "import json",
            "import re"
        ]
    );
    assert!(source[block.range.clone()].starts_with("from __future__"));
    assert!(source[block.range.clone()].ends_with("import re"));
    assert_eq!(&source[block.insert_at..], "x = 1\nimport late\n");
    assert_eq!(block.imports[1].bound_names, ["os", "sys"]);
    assert_eq!(block.imports[2].bound_names, ["Any", "Dict"]);
    assert_eq!(block.imports[3].bound_names, ["json"]);
    assert!(block.imports[0].bound_names.is_empty());
}

#[test]
fn an_import_inside_a_string_is_not_an_import() {
    let source = "x = \"import os\"\nimport sys\n";
    let block = ImportBlock::find(Language::Python, source);
    assert!(block.imports.is_empty());
    assert_eq!(block.insert_at, 0);
    let docstring_only = "\"\"\"import os\"\"\"\ndef f():\n    pass\n";
    let block = ImportBlock::find(Language::Python, docstring_only);
    assert!(block.imports.is_empty());
    assert_eq!(&docstring_only[block.insert_at..], "def f():\n    pass\n");
}

#[test]
fn c_and_cpp_includes_with_comments_and_pragmas() {
    let source = "/* header */\n#pragma once\n#include <stdio.h>\n// local\n#include \"util.h\"\n#define N 10\n#include <string.h>\n\nint main(void) {\n";
    let block = ImportBlock::find(Language::C, source);
    assert_eq!(
        texts(&block),
        [
            "#include <stdio.h>",
            "#include \"util.h\"",
            "#include <string.h>"
        ]
    );
    assert_eq!(&source[block.insert_at..], "\nint main(void) {\n");
    let cpp = "#include <vector>\nusing namespace std;\n#include <map>\n";
    let block = ImportBlock::find(Language::Cpp, cpp);
    assert_eq!(texts(&block), ["#include <vector>"]);
    assert!(block.imports[0].bound_names.is_empty());
}

#[test]
fn step1_keeps_only_new_valid_imports_and_stops_at_code() {
    let source = "import os\nfrom flask import Flask, request\n\napp = Flask(__name__)\n";
    let block = ImportBlock::find(Language::Python, source);
    assert_eq!(
        block.step1_prompt(source),
        "import os\nfrom flask import Flask, request"
    );
    let generated = "\nimport os\nimport subprocess\nimport shlex, re\nfrom markupsafe import escape\napp = Flask(__name__)\nimport never\n";
    let new = block.new_imports(generated);
    assert!(new.extended_last.is_none());
    let added: Vec<&str> = new.added.iter().map(|i| i.text.as_str()).collect();
    assert_eq!(
        added,
        [
            "import subprocess",
            "import shlex, re",
            "from markupsafe import escape"
        ]
    );
    // An unfinished last line is not kept; nor is an invalid one.
    let new = block.new_imports("\nimport json\nimport (broken\nimport half");
    let added: Vec<&str> = new.added.iter().map(|i| i.text.as_str()).collect();
    assert_eq!(added, ["import json"]);
}

#[test]
fn extending_the_last_import_line_is_an_edit_of_that_line() {
    // The paper's Listing 1.
    let source = "from flask import Flask, request, make_response\napp = Flask(__name__)\n";
    let block = ImportBlock::find(Language::Python, source);
    let new = block.new_imports(", escape\nimport html\n");
    let extended = new.extended_last.as_ref().expect("extension");
    assert_eq!(
        extended.text,
        "from flask import Flask, request, make_response, escape"
    );
    assert_eq!(
        extended.bound_names,
        ["Flask", "request", "make_response", "escape"]
    );
    let (merged, edit) = block.merge(source, &new);
    assert_eq!(
        merged,
        "from flask import Flask, request, make_response, escape\nimport html\napp = Flask(__name__)\n"
    );
    assert_eq!(edit.start(), (0, 0));
    assert_eq!(edit.end(), (0, 47));
    assert_eq!(
        edit.new_text,
        "from flask import Flask, request, make_response, escape\nimport html"
    );
}

#[test]
fn merge_never_duplicates_or_splits_the_block() {
    let source = "\"\"\"Doc.\"\"\"\nimport os\n\n\ndef run(cmd):\n";
    let block = ImportBlock::find(Language::Python, source);
    let new = block.new_imports("\nimport subprocess\nimport os\nimport subprocess\n");
    let (merged, edit) = block.merge(source, &new);
    assert_eq!(
        merged,
        "\"\"\"Doc.\"\"\"\nimport os\nimport subprocess\n\n\ndef run(cmd):\n"
    );
    assert_eq!((edit.start(), edit.end()), ((2, 0), (2, 0)));
    assert_eq!(edit.new_text, "import subprocess\n");
    let again = ImportBlock::find(Language::Python, &merged);
    assert_eq!(texts(&again), ["import os", "import subprocess"]);

    // No imports at all: new ones go after the docstring.
    let bare = "\"\"\"Doc.\"\"\"\ndef run(cmd):\n";
    let block = ImportBlock::find(Language::Python, bare);
    assert_eq!(block.step1_prompt(bare), "\"\"\"Doc.\"\"\"\n");
    let new = block.new_imports("import shlex\n");
    let (merged, _) = block.merge(bare, &new);
    assert_eq!(merged, "\"\"\"Doc.\"\"\"\nimport shlex\ndef run(cmd):\n");

    // Inside a try block the new line goes after the whole statement, at top level.
    let guarded = "try:\n    import ujson as json\nexcept ImportError:\n    import json\nx = 1\n";
    let block = ImportBlock::find(Language::Python, guarded);
    assert!(
        block.step1_prompt(guarded).ends_with("import json\n"),
        "a fresh line, not an extension"
    );
    let new = block.new_imports("import os\n");
    assert!(new.extended_last.is_none(), "no extension inside a try");
    let (merged, _) = block.merge(guarded, &new);
    assert!(
        merged.ends_with("    import json\nimport os\nx = 1\n"),
        "{merged}"
    );

    // C: a new include after the last one.
    let c = "#include <stdio.h>\n\nint main(void) {\n";
    let block = ImportBlock::find(Language::C, c);
    let new = block.new_imports("\n#include <stdio.h>\n#include <limits.h>\nint x;\n");
    let (merged, _) = block.merge(c, &new);
    assert_eq!(
        merged,
        "#include <stdio.h>\n#include <limits.h>\n\nint main(void) {\n"
    );
}

#[test]
fn unused_new_imports_are_pruned() {
    let source = "import os\n";
    let block = ImportBlock::find(Language::Python, source);
    let new = block.new_imports(
        "\nimport subprocess\nimport shlex as sh\nfrom html import escape\nfrom x import *\n",
    );
    let completion = "    return subprocess.run(sh.split(cmd))\n";
    let (kept, pruned) = block.prune_unused(&new, completion);
    let kept: Vec<&str> = kept.added.iter().map(|i| i.text.as_str()).collect();
    assert_eq!(
        kept,
        ["import subprocess", "import shlex as sh", "from x import *"]
    );
    assert_eq!(pruned.len(), 1);
    assert_eq!(pruned[0].text, "from html import escape");
}

#[test]
fn edit_positions_count_utf16_columns() {
    let source = "# café ☕\nimport os";
    let block = ImportBlock::find(Language::Python, source);
    let new = block.new_imports("\nimport re\n");
    let (merged, edit) = block.merge(source, &new);
    assert_eq!(merged, "# café ☕\nimport os\nimport re\n");
    assert_eq!(edit.start(), (1, 9));
    assert_eq!(Language::from_name("PY"), Some(Language::Python));
    assert_eq!(Language::from_name(".hpp"), Some(Language::Cpp));
    assert_eq!(Language::from_name("cobol"), None);
}

#[test]
fn a_cut_off_prompt_still_has_its_imports() {
    // Completion prompts end anywhere, here inside a docstring.
    let source =
        "import os\nfrom flask import request\n\n\ndef handler():\n    '''\n    Read the user";
    let block = ImportBlock::find(Language::Python, source);
    assert_eq!(texts(&block), ["import os", "from flask import request"]);
    assert_eq!(&source[block.insert_at..block.insert_at + 1], "\n");
}

#[test]
fn an_extension_whose_new_names_go_unused_is_undone() {
    let source = "from flask import Flask, request\n";
    let block = ImportBlock::find(Language::Python, source);
    let new = block.new_imports(", escape\n");
    assert!(new.extended_last.is_some());
    // `request` was there before; only `escape` is new, and unused.
    let (kept, pruned) = block.prune_unused(&new, "    return request.args['x']\n");
    assert!(kept.is_empty(), "{kept:?}");
    assert_eq!(pruned[0].text, "from flask import Flask, request, escape");
    let (kept, pruned) = block.prune_unused(&new, "    return escape(request.args['x'])\n");
    assert!(kept.extended_last.is_some());
    assert!(pruned.is_empty());
}

#[test]
fn step1_ends_at_the_first_line_that_cannot_be_an_import() {
    let source = "import os\nfrom flask import request\n\ndef f():\n";
    let block = ImportBlock::find(Language::Python, source);
    // Still on the last import's line, or on lines that may become imports.
    assert!(!block.step1_done(", escape"));
    assert!(!block.step1_done("\nimport re\nfr"));
    assert!(!block.step1_done("\n\n# helpers\nfrom a import (\n    b,\n"));
    assert!(!block.step1_done("\nimport re\n"));
    // Code, or an indented line, ends it, even before its line is complete.
    assert!(block.step1_done("\nimport re\nde"));
    assert!(block.step1_done("\n\napp = 1\n"));
    assert!(block.step1_done("\n    x = 1"));
    let c = "#include <stdio.h>\n";
    let block = ImportBlock::find(Language::C, c);
    assert!(!block.step1_done("#include <limits.h>\n#"));
    assert!(!block.step1_done("/* more */\n  #include <string.h>\n"));
    assert!(block.step1_done("#include <limits.h>\nint"));
    assert!(block.step1_done("#define N 10\n"));
}

#[test]
fn the_language_is_told_by_the_imports() {
    assert_eq!(
        Language::detect("import os\n\ndef f():\n"),
        Some(Language::Python)
    );
    assert_eq!(
        Language::detect("#include <stdio.h>\nint main() {"),
        Some(Language::C)
    );
    assert_eq!(
        Language::detect("#include <vector>\nint main() { std::vector<int> v;"),
        Some(Language::Cpp)
    );
    assert_eq!(Language::detect("x = 'import os'\n"), None);
}

#[test]
fn the_step1_prompt_is_a_prefix_of_every_merge() {
    for (language, source, generated) in [
        (
            Language::Python,
            "#!/usr/bin/env python\n\"\"\"Doc.\"\"\"\nimport os\n\nx = 1\n",
            "\nimport re\n",
        ),
        (
            Language::Python,
            "from flask import request\nx = 1\n",
            ", escape\nimport html\n",
        ),
        (
            Language::Python,
            "try:\n    import ujson\nexcept ImportError:\n    pass\nx = 1\n",
            "import json\n",
        ),
        (Language::Python, "\"\"\"Doc.\"\"\"", "import os\n"),
        (
            Language::C,
            "// Copyright\n#pragma once\n#include <stdio.h>",
            "#include <limits.h>\n",
        ),
    ] {
        let block = ImportBlock::find(language, source);
        let head = block.step1_prompt(source);
        let (merged, _) = block.merge(source, &block.new_imports(generated));
        assert!(merged.starts_with(&head), "{head:?} / {merged:?}");
        let kept = generated.trim_end_matches('\n');
        assert!(
            merged.starts_with(&format!("{head}{kept}")),
            "{head:?}+{generated:?} / {merged:?}"
        );
    }
}

fn names(import: &Import) -> Vec<&str> {
    let mut names: Vec<&str> = import.bound_names.iter().map(String::as_str).collect();
    names.sort_unstable();
    names
}

#[test]
fn javascript_and_typescript_imports_and_requires() {
    let source = "#!/usr/bin/env node\n'use strict';\n// deps\nconst fs = require('fs');\nimport path from 'path';\nimport { readFile as rf, writeFile } from 'fs/promises';\n\nfunction main() {\n";
    let block = ImportBlock::find(Language::JavaScript, source);
    assert_eq!(
        texts(&block),
        [
            "const fs = require('fs');",
            "import path from 'path';",
            "import { readFile as rf, writeFile } from 'fs/promises';"
        ]
    );
    assert_eq!(names(&block.imports[0]), ["fs"]);
    assert_eq!(names(&block.imports[2]), ["rf", "writeFile"]);
    assert!(block.step1_prompt(source).ends_with("'fs/promises';\n"));
    let new = block.new_imports("const { execFile } = require('child_process');\nconst x = 1;\n");
    assert_eq!(new.added.len(), 1);
    assert_eq!(names(&new.added[0]), ["execFile"]);
    assert!(!block.step1_done("import {\n  a,\n"));
    assert!(block.step1_done("import os from 'os';\nfunction"));

    // A string that mentions an import is not one.
    let quoted = "const s = \"import x from 'y'\";\n";
    assert!(
        ImportBlock::find(Language::JavaScript, quoted)
            .imports
            .is_empty()
    );

    let ts = "import type { A } from './a';\nimport fs = require('fs');\n\nexport function f(): string {\n";
    let block = ImportBlock::find(Language::TypeScript, ts);
    assert_eq!(block.imports.len(), 2);
    assert_eq!(names(&block.imports[0]), ["A"]);
    assert_eq!(names(&block.imports[1]), ["fs"]);
    let tsx = "import React from 'react';\n\nexport const App = () => <div/>;\n";
    assert_eq!(ImportBlock::find(Language::Tsx, tsx).imports.len(), 1);
}

#[test]
fn go_java_and_rust_imports_after_their_headers() {
    let go = "// Command main.\npackage main\n\nimport (\n\t\"fmt\"\n\tyaml \"gopkg.in/yaml.v3\"\n)\n\nfunc main() {\n";
    let block = ImportBlock::find(Language::Go, go);
    assert_eq!(block.imports.len(), 1);
    assert_eq!(names(&block.imports[0]), ["fmt", "yaml"]);
    let new = block.new_imports("import \"html/template\"\nfunc helper() {\n");
    assert_eq!(names(&new.added[0]), ["template"]);
    let (merged, _) = block.merge(go, &new);
    assert!(
        merged.contains(")\nimport \"html/template\"\n\nfunc main"),
        "{merged}"
    );
    assert!(block.step1_done("import \"os\"\nfunc"));
    assert!(!block.step1_done("import (\n\t\"os\"\n"));

    let java = "package com.example;\n\nimport java.util.List;\nimport static java.lang.Math.max;\nimport java.io.*;\n\npublic class A {\n";
    let block = ImportBlock::find(Language::Java, java);
    assert_eq!(block.imports.len(), 3);
    assert_eq!(names(&block.imports[0]), ["List"]);
    assert_eq!(names(&block.imports[1]), ["max"]);
    assert!(
        block.imports[2].bound_names.is_empty(),
        "a wildcard binds unknown names"
    );
    assert_eq!(
        block.new_imports("import java.util.Map;\npublic").added[0].text,
        "import java.util.Map;"
    );

    let rust = "//! Crate docs.\n#![deny(missing_docs)]\nmod config;\nuse std::collections::{HashMap, HashSet as Set};\nuse std::io::{self, Read};\nextern crate serde as s;\nuse a::*;\n\nfn main() {\n";
    let block = ImportBlock::find(Language::Rust, rust);
    assert_eq!(block.imports.len(), 4, "{:?}", texts(&block));
    assert_eq!(names(&block.imports[0]), ["HashMap", "Set"]);
    assert_eq!(names(&block.imports[1]), ["Read", "io"]);
    assert_eq!(names(&block.imports[2]), ["s"]);
    assert!(block.imports[3].bound_names.is_empty());
    let new = block
        .new_imports("use std::fs;\nuse std::path::{\n    Path,\n    PathBuf,\n};\nfn x() {}\n");
    assert_eq!(new.added.len(), 2, "{new:?}");
    assert_eq!(names(&new.added[1]), ["Path", "PathBuf"]);
    let (kept, pruned) = block.prune_unused(&new, "    let p = Path::new(\"x\");\n");
    assert_eq!(kept.added.len(), 1);
    assert_eq!(pruned[0].text, "use std::fs;");
    assert!(block.step1_done("use std::fs;\nfn"));
}

#[test]
fn every_language_is_named_and_detected() {
    for (source, language) in [
        ("package main\n\nimport \"fmt\"\n", Language::Go),
        ("package a.b;\nimport java.util.List;\n", Language::Java),
        ("use std::io;\nfn main() {}\n", Language::Rust),
        ("import fs from 'fs';\n", Language::JavaScript),
        ("const fs = require('fs');\n", Language::JavaScript),
        ("import type { A } from './a';\n", Language::TypeScript),
    ] {
        assert_eq!(Language::detect(source), Some(language), "{source}");
    }
    for (name, language) in [
        ("typescriptreact", Language::Tsx),
        ("go", Language::Go),
        ("java", Language::Java),
        ("rs", Language::Rust),
        ("mjs", Language::JavaScript),
    ] {
        assert_eq!(Language::from_name(name), Some(language));
    }
    // Every grammar loads and an empty file has an empty block at its start.
    for language in LANGUAGES {
        let block = ImportBlock::find(language, "");
        assert!(
            block.imports.is_empty() && block.insert_at == 0,
            "{language:?}"
        );
    }
}
