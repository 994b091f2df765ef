"""The command-line interface: parse options, call the library, render the payload."""
