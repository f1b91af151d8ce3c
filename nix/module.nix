# NixOS module: services.nexus.<service>.{enable, port, settings, environmentFile, resources,
# openFirewall} for every service in ./services.json (written by `nexusd units packaging
# --manifest`, checked against the code by a test), plus etcd wiring: a local etcd by default.
#
# The units themselves are the package's rendered ones ($out/lib/systemd/system, through
# systemd.packages): notify, watchdog, limits and hardening are exactly those of `nexusd units
# render`. This module only adds what NixOS options change, as drop-ins (overrides.conf).
{ self }:
{ config, lib, pkgs, ... }:
let
  inherit (lib) mkEnableOption mkIf mkOption types;
  cfg = config.services.nexus;
  manifest = lib.importJSON ./services.json;
  enabled = lib.filterAttrs (name: _: cfg.${name}.enable) manifest;

  quantity = types.strMatching "[0-9]+(Ki|Mi|Gi|Ti)?";
  cpuQuantity = types.strMatching "[0-9]+m?";
  factor = { "" = 1; Ki = 1024; Mi = 1048576; Gi = 1073741824; Ti = 1099511627776; };
  bytes = q: let m = builtins.match "([0-9]+)(Ki|Mi|Gi|Ti)?" q;
    in lib.toInt (builtins.elemAt m 0) * factor.${if builtins.elemAt m 1 == null then "" else builtins.elemAt m 1};
  # Same arithmetic as nexusd/units/render.py: CPUQuota= in per cent, MemoryHigh= ~90% in MiB.
  cpuQuota = q: if lib.hasSuffix "m" q then "${toString (lib.toInt (lib.removeSuffix "m" q) / 10)}%"
    else "${toString (lib.toInt q * 100)}%";
  memoryHigh = limit: let mib = 1048576; in lib.max mib (limit * 9 / 10 / mib * mib);

  envValue = v: if builtins.isBool v then (if v then "1" else "0") else toString v;

  serviceOptions = name: meta: {
    enable = mkEnableOption "the nexusd ${name} service (${meta.unit})";
    port = mkOption {
      type = types.nullOr types.port;
      default = null;
      example = (builtins.head meta.listeners).port;
      description = ''
        Port of the ${(builtins.head meta.listeners).name} listener (default
        ${toString (builtins.head meta.listeners).port}). Sets ${(builtins.head meta.listeners).port_env}
        and, with socket activation, the socket unit's ListenStream=.
      '';
    };
    settings = mkOption {
      type = types.attrsOf (types.oneOf [ types.str types.int types.float types.bool ]);
      default = { };
      example = { host = "0.0.0.0"; start_timeout = 300; };
      description = ''
        Settings as environment variables: `{ host = "0.0.0.0"; }` becomes
        ${meta.env_prefix}HOST=0.0.0.0. See `nexusd env-example ${name}` for all of them.
      '';
    };
    environmentFile = mkOption {
      type = types.nullOr types.path;
      default = null;
      description = "An extra EnvironmentFile= for secrets (kept out of the Nix store).";
    };
    resources = {
      cpu = mkOption {
        type = types.nullOr cpuQuantity;
        default = meta.resources.cpu or null;
        description = "CPU cores (`4`, `500m`): CPUQuota= and the declared metadata resources.";
      };
      memory = mkOption {
        type = types.nullOr quantity;
        default = meta.resources.memory or null;
        description = "Memory (`16Gi`): MemoryMax=, MemoryHigh= (~90%) and the declared resources.";
      };
      gpu_memory = mkOption {
        type = types.nullOr quantity;
        default = meta.resources.gpu_memory or null;
        description = "GPU memory cap, enforced in-process (cgroups cannot): NEXUS_GPU_MEMORY.";
      };
    };
    openFirewall = mkOption {
      type = types.bool;
      default = false;
      description = "Open the service's TCP ports (bind beyond 127.0.0.1 with settings.host too).";
    };
  };

  # The first listener's port follows the `port` option; further ones (the gateway's obs) keep theirs.
  ports = name: meta: lib.imap0 (i: l: if i == 0 && cfg.${name}.port != null
    then cfg.${name}.port else l.port) meta.listeners;

  unitFor = name: meta: let
    s = cfg.${name};
    r = s.resources;
    first = builtins.head meta.listeners;
  in {
    wantedBy = [ "nexus.target" ];
    wants = lib.optional cfg.etcd.enable "etcd.service";
    after = lib.optional cfg.etcd.enable "etcd.service";
    environment = lib.mapAttrs' (k: v: lib.nameValuePair "${meta.env_prefix}${lib.toUpper k}" (envValue v)) s.settings
      // lib.optionalAttrs (s.port != null) { ${first.port_env} = toString s.port; }
      // lib.optionalAttrs (r.cpu != null) { "${meta.env_prefix}CPU" = r.cpu; }
      // lib.optionalAttrs (r.memory != null) { "${meta.env_prefix}MEMORY" = r.memory; }
      // lib.optionalAttrs (r.gpu_memory != null) { NEXUS_GPU_MEMORY = r.gpu_memory; }
      // lib.optionalAttrs (cfg.etcd.endpoints != [ ]) { NEXUS_ETCD_ENDPOINTS = lib.concatStringsSep "," cfg.etcd.endpoints; };
    serviceConfig = {
      EnvironmentFile = lib.optional (s.environmentFile != null) s.environmentFile;
    } // lib.optionalAttrs (r.cpu != null) { CPUQuota = cpuQuota r.cpu; }
      // lib.optionalAttrs (r.memory != null) {
        MemoryMax = toString (bytes r.memory);
        MemoryHigh = toString (memoryHigh (bytes r.memory));
      };
  };

  socketFor = name: meta: let
    first = builtins.head meta.listeners;
    host = toString (cfg.${name}.settings.host or first.host);
    port = toString (builtins.head (ports name meta));
    address = if host == "0.0.0.0" || host == "" then port
      else "${if lib.hasInfix ":" host then "[${host}]" else host}:${port}";
  in lib.optionalAttrs (first.socket != null) {
    ${lib.removeSuffix ".socket" first.socket} = {
      wantedBy = [ "nexus.target" ];
      # The empty entry resets the rendered ListenStream= before adding ours.
      listenStreams = lib.optionals (cfg.${name}.port != null || cfg.${name}.settings ? host) [ "" address ];
    };
  };
in
{
  options.services.nexus = {
    package = mkOption {
      type = types.package;
      default = self.packages.${pkgs.stdenv.hostPlatform.system}.default;
      defaultText = lib.literalExpression "nexusd.packages.\${system}.default";
      description = "The nexusd package; its rendered units are used as they are.";
    };
    etcd = {
      # The default, as `nexusd units install` does: services on one host find each other
      # through a local etcd, and the same setup grows to more hosts (docs/multi-host.md).
      enable = mkOption {
        type = types.bool;
        default = true;
        description = ''
          Run a local etcd (services.etcd, 127.0.0.1:2379) and point every enabled service at it.
          Set to false with `endpoints` naming your cluster (other hosts), or with no endpoints:
          the gateway then finds the services enabled on this host from their units.
        '';
      };
      endpoints = mkOption {
        type = types.listOf types.str;
        default = lib.optional cfg.etcd.enable "http://127.0.0.1:2379";
        defaultText = lib.literalExpression ''[ "http://127.0.0.1:2379" ] when etcd.enable'';
        description = "NEXUS_ETCD_ENDPOINTS for every enabled service (empty: static discovery only).";
      };
    };
  } // lib.mapAttrs serviceOptions manifest;

  config = mkIf (enabled != { }) {
    systemd.packages = [ cfg.package ];
    systemd.tmpfiles.packages = [ cfg.package ];
    systemd.targets.nexus.wantedBy = [ "multi-user.target" ];
    systemd.services = lib.mapAttrs' (name: meta: lib.nameValuePair "nexus-${name}" (unitFor name meta)) enabled;
    systemd.sockets = lib.foldl' (acc: name: acc // socketFor name enabled.${name}) { } (builtins.attrNames enabled);

    # What packaging/sysusers.d/nexus.conf declares; DynamicUser= then uses this static user.
    users.users.nexus = { isSystemUser = true; group = "nexus"; description = "nexusd AI services"; };
    users.groups.nexus = { };

    services.etcd.enable = mkIf cfg.etcd.enable true;
    networking.firewall.allowedTCPPorts = lib.concatLists (lib.mapAttrsToList
      (name: meta: lib.optionals cfg.${name}.openFirewall (ports name meta)) enabled);
    environment.systemPackages = [ cfg.package ];
  };
}
