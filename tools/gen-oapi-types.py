#!/usr/bin/env python3
"""Generate src/publish/oapi.rs and src/publish/oapi-examples.json from Outscale's API description.

Usage (from the repository root):

    python3 tools/gen-oapi-types.py [SPEC] [--check]

SPEC defaults to ../shared/specs/osc-api-1.40.1.yaml (relative to the repository root).
With --check nothing is written: the script exits 1 if either output differs from what it would
write (a regenerate-and-diff check for CI).

Only the operations mkomi calls are generated (OPERATIONS below): their Request and Response
schemas (the 200 answer and the error answers) and every schema they `$ref`, one Rust struct per
object schema. The spec's subset in use is small (checked when run: anything else is refused):
`$ref`, `additionalProperties`, `default`, `description`, `enum`, `format`, `items`,
`required`, `type`, with types object/string/integer/boolean/array.

Needs python3 and PyYAML only. The output is deterministic: schemas and fields are sorted.
"""

import json
import os
import re
import sys

import yaml

# The operations of issue #15 (`mkomi publish` and `mkomi pull`), sorted.
OPERATIONS = sorted(
    [
        "CreateImage",
        "CreateImageExportTask",
        "CreateSnapshot",
        "CreateSnapshotExportTask",
        "CreateTags",
        "DeleteImage",
        "DeleteSnapshot",
        "DeleteTags",
        "ReadImageExportTasks",
        "ReadImages",
        "ReadSnapshotExportTasks",
        "ReadSnapshots",
        "UpdateImage",
    ]
)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_SPEC = "../shared/specs/osc-api-1.40.1.yaml"
OUT_RS = os.path.join("src", "publish", "oapi.rs")
OUT_JSON = os.path.join("src", "publish", "oapi-examples.json")

# The keys of a schema (or of a property) this generator knows how to express.
KNOWN_KEYS = {
    "$ref",
    "additionalProperties",
    "default",
    "description",
    "enum",
    "format",
    "items",
    "required",
    "type",
    "properties",
}

RUST_KEYWORDS = {
    "as", "async", "await", "break", "const", "continue", "crate", "dyn", "else", "enum",
    "extern", "false", "fn", "for", "gen", "if", "impl", "in", "let", "loop", "match", "mod",
    "move", "mut", "pub", "ref", "return", "self", "Self", "static", "struct", "super", "trait",
    "true", "type", "unsafe", "use", "where", "while", "abstract", "become", "box", "do",
    "final", "macro", "override", "priv", "typeof", "unsized", "virtual", "yield", "try",
}


class GenError(Exception):
    """A construct of the spec this generator cannot express."""


def ref_name(ref):
    prefix = "#/components/schemas/"
    if not ref.startswith(prefix):
        raise GenError(f"unsupported $ref {ref!r}")
    return ref[len(prefix):]


def snake(name):
    """PascalCase -> snake_case (`SnapshotId` -> `snapshot_id`, `VmId` -> `vm_id`)."""
    s = re.sub(r"([A-Z]+)([A-Z][a-z])", r"\1_\2", name)
    s = re.sub(r"([a-z0-9])([A-Z])", r"\1_\2", s)
    s = s.lower()
    if s in RUST_KEYWORDS:
        s += "_"
    return s


def upper_snake(name):
    return snake(name).rstrip("_").upper()


def first_sentence(text):
    """The first sentence of a description: up to the first '. ' (or '.<br />', or a newline)."""
    text = text.strip()
    m = re.search(r"\.(\s|<br\s*/?>)", text)
    if m:
        text = text[: m.start() + 1]
    return text.split("\n")[0].strip()


def rustdoc(text):
    """Markdown/HTML from the spec made safe for `RUSTDOCFLAGS=-D warnings`.

    Links become `text (<url>)` (relative ones just `text`); HTML tags are dropped; remaining
    brackets are escaped so rustdoc does not take them for intra-doc links; bare URLs are put in
    angle brackets (rustdoc::bare_urls).
    """
    links = []

    def link(m):
        label, url = m.group(1), m.group(2)
        if re.match(r"https?://", url):
            links.append(url)
            return f"{label} (\x00{len(links) - 1}\x00)"
        return label

    text = re.sub(r"\[([^\]]*)\]\(([^)]*)\)", link, text)
    text = re.sub(r"<[^>]+>", " ", text)
    text = text.replace("&quot;", '"')
    text = text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    # Brackets outside code spans would be taken for intra-doc links; inside, they are literal.
    parts = text.split("`")
    for i in range(0, len(parts), 2):
        parts[i] = parts[i].replace("[", "\\[").replace("]", "\\]")
    text = "`".join(parts)
    text = re.sub(r"(https?://[^\s)]+)", r"<\1>", text)
    text = re.sub(r"\x00(\d+)\x00", lambda m: "<" + links[int(m.group(1))] + ">", text)
    text = re.sub(r"\s+", " ", text).strip()
    return text


def wrap(prefix, text, width=100):
    """`text` in lines of at most `width` characters, each starting with `prefix`."""
    lines, line = [], prefix.rstrip()
    for word in text.split():
        if len(line) + 1 + len(word) > width and line != prefix.rstrip():
            lines.append(line)
            line = prefix.rstrip()
        line += " " + word
    lines.append(line)
    return lines


def check_keys(where, obj):
    unknown = set(obj) - KNOWN_KEYS
    if unknown:
        raise GenError(f"{where}: unsupported keys {sorted(unknown)}")


class Generator:
    def __init__(self, spec):
        self.spec = spec
        self.schemas = spec["components"]["schemas"]
        self.used = set()
        self.request_side = set()
        self.response_side = set()

    def walk(self, name, side):
        """Adds `name` and every schema it `$ref`s to `side` and to the used set."""
        if name in side:
            return
        schema = self.schemas.get(name)
        if schema is None:
            raise GenError(f"missing schema {name}")
        side.add(name)
        self.used.add(name)
        refs = []
        self.collect_refs(schema, refs)
        for r in refs:
            self.walk(r, side)

    def collect_refs(self, obj, out):
        if isinstance(obj, dict):
            for k, v in obj.items():
                if k == "$ref":
                    out.append(ref_name(v))
                else:
                    self.collect_refs(v, out)
        elif isinstance(obj, list):
            for v in obj:
                self.collect_refs(v, out)

    def operation(self, op):
        path = self.spec["paths"].get("/" + op)
        if path is None or "post" not in path:
            raise GenError(f"operation {op} not in the spec")
        post = path["post"]
        body = post["requestBody"]["content"]["application/json"]
        req = ref_name(body["schema"]["$ref"])
        if req != op + "Request":
            raise GenError(f"{op}: request schema is {req}")
        self.walk(req, self.request_side)
        ex = {"request": [], "response": []}
        for name, e in sorted(body.get("examples", {}).items()):
            ex["request"].append({"name": name, "value": e["value"]})
        for code, resp in sorted(post["responses"].items()):
            content = resp.get("content", {}).get("application/json")
            if content is None:
                continue
            schema = ref_name(content["schema"]["$ref"])
            self.walk(schema, self.response_side)
            if code == "200" and schema != op + "Response":
                raise GenError(f"{op}: 200 answer is {schema}")
            for name, e in sorted(content.get("examples", {}).items()):
                ex["response"].append({"status": code, "schema": schema, "name": name, "value": e["value"]})
        return ex

    def rust_type(self, where, prop):
        check_keys(where, prop)
        if "$ref" in prop:
            name = ref_name(prop["$ref"])
            return name
        t = prop.get("type")
        if t == "string":
            return "String"
        if t == "integer":
            # int32, int64 and no format alike: i64 holds them all.
            if prop.get("format") not in (None, "int32", "int64"):
                raise GenError(f"{where}: integer format {prop.get('format')}")
            return "i64"
        if t == "boolean":
            return "bool"
        if t == "array":
            return "Vec<" + self.rust_type(where + "[]", prop["items"]) + ">"
        raise GenError(f"{where}: unsupported type {t!r}")

    def prop_doc(self, prop):
        lines = []
        desc = prop.get("description")
        if desc:
            lines.append(rustdoc(first_sentence(desc)))
        notes = []
        if "format" in prop and prop["format"] not in ("int32", "int64"):
            notes.append(f"format `{prop['format']}`")
        if "default" in prop:
            notes.append("default `" + json.dumps(prop["default"]) + "`")
        if "enum" in prop:
            notes.append("one of " + ", ".join(f"`{v}`" for v in prop["enum"]))
        if prop.get("type") == "array" and "enum" in prop.get("items", {}):
            notes.append("items one of " + ", ".join(f"`{v}`" for v in prop["items"]["enum"]))
        if notes:
            lines.append("(Spec: " + "; ".join(notes) + ".)")
        return lines

    def schema_doc(self, name, desc):
        if desc:
            return rustdoc(first_sentence(desc))
        for suffix, what in (("Request", "The body of a `{}` request."), ("Response", "The answer to `{}`.")):
            if name.endswith(suffix) and name[: -len(suffix)] in OPERATIONS:
                return what.format(name[: -len(suffix)])
        return f"The spec's `{name}`."

    def emit_schema(self, name, out):
        schema = self.schemas[name]
        check_keys(name, schema)
        desc = schema.get("description")
        t = schema.get("type")
        if t == "string" and "enum" in schema:
            # Enums stay strings: see the module documentation.
            values = list(schema["enum"])
            out.append(f"/// {rustdoc(first_sentence(desc))}" if desc else f"/// `{name}`.")
            out.append("///")
            out.append("/// Allowed values (spec): " + ", ".join(f"`{v}`" for v in values)
                       + f", also in [`{upper_snake(name)}_VALUES`].")
            out.append(f"pub type {name} = String;")
            out.append("")
            out.append(f"/// The values the spec allows for [`{name}`].")
            vals = ", ".join(json.dumps(v) for v in values)
            out.append(f"pub const {upper_snake(name)}_VALUES: &[&str] = &[{vals}];")
            return
        if t != "object":
            raise GenError(f"{name}: top-level type {t!r}")
        if schema.get("additionalProperties") not in (None, False):
            raise GenError(f"{name}: additionalProperties {schema['additionalProperties']!r}")
        required = set(schema.get("required", []))
        props = schema.get("properties", {})
        if not props:
            raise GenError(f"{name}: no properties")
        missing = required - set(props)
        if missing:
            raise GenError(f"{name}: required but not defined: {sorted(missing)}")
        strict = name in self.request_side and name not in self.response_side
        out.append(f"/// {self.schema_doc(name, desc)}")
        out.append("///")
        if strict:
            out.append("/// Sent only: unknown fields are refused when parsed, as the spec's")
            out.append("/// `additionalProperties: false` says.")
        else:
            out.append("/// Received: unknown fields are ignored when parsed, so that a newer API")
            out.append("/// with more fields is still understood.")
        out.append("#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]")
        if strict:
            out.append("#[serde(deny_unknown_fields)]")
        out.append(f"pub struct {name} {{")
        for pname in sorted(props):
            prop = props[pname]
            where = f"{name}.{pname}"
            rt = self.rust_type(where, prop)
            for line in self.prop_doc(prop) or [f"`{pname}`."]:
                out.append(f"    /// {line}")
            if pname in required:
                out.append("    /// Required.")
                out.append(f'    #[serde(rename = "{pname}")]')
                out.append(f"    pub {snake(pname)}: {rt},")
            else:
                attr = f'    #[serde(rename = "{pname}", skip_serializing_if = "Option::is_none")]'
                inner = f'rename = "{pname}", skip_serializing_if = "Option::is_none"'
                if len(attr) > 100 or len(inner) > 70:
                    # As rustfmt lays out a long attribute (max_width 100, attr_fn_like_width 70
                    # of the default small heuristics), so that `cargo fmt`
                    # leaves the generated file alone and --check stays meaningful.
                    attr = "\n".join([
                        "    #[serde(",
                        f'        rename = "{pname}",',
                        '        skip_serializing_if = "Option::is_none"',
                        "    )]",
                    ])
                out.append(attr)
                out.append(f"    pub {snake(pname)}: Option<{rt}>,")
        out.append("}")

    def generate(self, spec_arg):
        examples = {op: self.operation(op) for op in OPERATIONS}
        info = self.spec["info"]
        version = info["version"]
        license_name = info.get("license", {}).get("name", "?")
        out = [
            "// @generated by `python3 tools/gen-oapi-types.py " + spec_arg + "`: DO NOT EDIT.",
            f"// From the Outscale API description {os.path.basename(spec_arg)} (\"{info['title']}\",",
            f"// version {version}), Copyright (c) 2019 Outscale SAS, {license_name} licence",
            "// (../shared/specs/osc-api-LICENSE). Regenerate instead of editing.",
            "",
            f"//! Request and response types of the Outscale API (OAPI {version}), generated from its",
            "//! description.",
            "//!",
            "//! One struct per schema that the operations of `mkomi publish` and `mkomi pull` use:",
            *wrap("//! ", ", ".join(f"`{op}`" for op in OPERATIONS) + "."),
            "//! Field names are the spec's PascalCase names through `serde(rename)`; fields the spec",
            "//! does not list as required are `Option`s left out of the JSON when `None`. Integers are",
            "//! `i64` whatever their format (int32, int64 or none). Schemas reached only from requests",
            "//! refuse unknown fields when parsed (the spec's `additionalProperties: false`); those in",
            "//! responses accept them, because the API grows.",
            "//!",
            "//! Enumerations stay `String`s (an alias with the allowed values in its documentation and",
            "//! in a `…_VALUES` constant): the examples and answers already hold values outside the",
            "//! documented sets (snapshot states such as `pending/queued`, `importing`), a `String`",
            "//! carries them through unchanged, and request bodies are checked against the spec",
            "//! itself by the `--dry-run` validation and the test server.",
            "",
            "use serde::{Deserialize, Serialize};",
            "",
            f"/// The version of the API description these types come from.",
            f'pub const API_VERSION: &str = "{version}";',
            "",
            "/// The operations these types cover, sorted.",
            "pub const OPERATIONS: &[&str] = &[",
        ]
        for op in OPERATIONS:
            out.append(f'    "{op}",')
        out.append("];")
        for name in sorted(self.used):
            out.append("")
            self.emit_schema(name, out)
        rs = "\n".join(out) + "\n"
        js = json.dumps(
            {"spec": os.path.basename(spec_arg), "version": version, "operations": examples},
            indent=1,
            sort_keys=True,
            ensure_ascii=False,
        ) + "\n"
        return rs, js


def main(argv):
    args = [a for a in argv[1:] if a != "--check"]
    check = "--check" in argv[1:]
    spec_arg = args[0] if args else DEFAULT_SPEC
    spec_path = spec_arg if os.path.isabs(spec_arg) else os.path.join(REPO, spec_arg)
    with open(spec_path, encoding="utf-8") as f:
        spec = yaml.safe_load(f)
    try:
        rs, js = Generator(spec).generate(spec_arg)
    except GenError as e:
        print(f"gen-oapi-types: {e}", file=sys.stderr)
        return 2
    status = 0
    for rel, text in ((OUT_RS, rs), (OUT_JSON, js)):
        path = os.path.join(REPO, rel)
        if check:
            try:
                with open(path, encoding="utf-8") as f:
                    same = f.read() == text
            except FileNotFoundError:
                same = False
            if not same:
                print(f"gen-oapi-types: {rel} is out of date", file=sys.stderr)
                status = 1
        else:
            with open(path, "w", encoding="utf-8") as f:
                f.write(text)
    return status


if __name__ == "__main__":
    sys.exit(main(sys.argv))
