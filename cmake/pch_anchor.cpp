// Anchor for the shared torch precompiled header (cmake/Dependencies.cmake).
