"""End-to-end tests: a real `dg dev` server, its GraphQL API and a headless browser."""
