//! Helpers shared by the integration tests: spawning binaries, fake apps, clients.
