# Reads pyproject.toml with builtins only (no nixpkgs), so the package follows it:
# name, version, and the Python dependencies as nixpkgs attribute names.
# Evaluated on its own in tests (nix-instantiate --eval), see docs/operations.md.
{ pyprojectFile }:
let
  project = (builtins.fromTOML (builtins.readFile pyprojectFile)).project;
  # "pydantic-settings>=2.2" -> "pydantic-settings"; "llama-cpp-python[server]>=0.3" -> "llama-cpp-python"
  nameOf = spec: builtins.head (builtins.match "([A-Za-z0-9._-]+).*" spec);
  # nixpkgs spells Python attributes in lower case with dashes (PEP 503 normalised).
  attrOf = spec: builtins.replaceStrings [ "_" "." ] [ "-" "-" ] (nixLower (nameOf spec));
  nixLower = s: builtins.replaceStrings
    [ "A" "B" "C" "D" "E" "F" "G" "H" "I" "J" "K" "L" "M" "N" "O" "P" "Q" "R" "S" "T" "U" "V" "W" "X" "Y" "Z" ]
    [ "a" "b" "c" "d" "e" "f" "g" "h" "i" "j" "k" "l" "m" "n" "o" "p" "q" "r" "s" "t" "u" "v" "w" "x" "y" "z" ]
    s;
in
{
  pname = project.name;
  inherit (project) version;
  description = project.description;
  dependencies = map attrOf project.dependencies;
  optionalDependencies = builtins.mapAttrs (_: map attrOf) (project.optional-dependencies or { });
  scripts = builtins.attrNames (project.scripts or { });
}
