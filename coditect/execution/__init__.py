"""Running one task: the executor and the ways an agent can run (LLM, HTTP endpoint, legacy script)."""
