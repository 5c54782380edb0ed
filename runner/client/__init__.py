"""The command line: argument parsing and verbs (cli), the HTTP client and wallet key (http),
the live progress view (progress), and `runner demo` (demo). The client verbs import nothing
from the server; `serve`, `migrate` and `demo` start it."""
