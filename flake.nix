{
  # nexusd: AI HTTP services as systemd units. See docs/operations.md ("Nix and NixOS") for what
  # has and has not been evaluated: this file was syntax-checked, not built, where it was written.
  description = "nexusd: OpenAI-compatible AI HTTP services as systemd units on bare-metal GPU hosts";

  inputs.nixpkgs.url = "github:NixOS/nixpkgs/nixos-unstable";

  outputs = { self, nixpkgs }:
    let
      systems = [ "x86_64-linux" "aarch64-linux" ];
      forAllSystems = f: nixpkgs.lib.genAttrs systems (system: f nixpkgs.legacyPackages.${system});
      # Service names and ports, as the code declares them (a test keeps it in sync).
      services = builtins.attrNames (nixpkgs.lib.importJSON ./nix/services.json);
    in
    {
      packages = forAllSystems (pkgs: rec {
        nexusd = pkgs.callPackage ./nix/package.nix { };
        default = nexusd;
      });

      # `nix run .#gateway` = `nexusd run gateway` in the foreground (settings from the environment).
      apps = forAllSystems (pkgs: nixpkgs.lib.genAttrs services (name: {
        type = "app";
        program = "${pkgs.writeShellScript "nexus-${name}" ''
          exec ${self.packages.${pkgs.stdenv.hostPlatform.system}.default}/bin/nexusd run ${name} "$@"
        ''}";
      }));

      nixosModules.default = import ./nix/module.nix { inherit self; };

      checks = forAllSystems (pkgs: {
        package = self.packages.${pkgs.stdenv.hostPlatform.system}.default;
        vm = import ./nix/vm-test.nix { inherit self pkgs; };
      });
    };
}
