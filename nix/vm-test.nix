# NixOS VM test (flake `checks`): the module's units under a real systemd, as tests/units does
# in a sandbox: READY=1, limits from resources, journal fields, reload, socket-held restart.
{ self, pkgs }:
pkgs.testers.runNixOSTest {
  name = "nexusd-units";
  nodes.machine = { pkgs, ... }: {
    imports = [ self.nixosModules.default ];
    services.nexus.template = {
      enable = true;
      port = 9100;
      resources.memory = "512Mi";
      settings.warmup = 1;
    };
    environment.systemPackages = [ pkgs.curl pkgs.jq ];
  };
  testScript = ''
    machine.wait_for_unit("nexus-template.service")
    machine.succeed("curl -sf http://127.0.0.1:9100/readyz")
    machine.succeed("systemctl show -p MemoryMax nexus-template | grep -qx MemoryMax=536870912")
    machine.succeed("systemctl show -p CPUQuotaPerSecUSec nexus-template | grep -qx CPUQuotaPerSecUSec=1s")
    machine.succeed("curl -sf http://127.0.0.1:9100/v1/metadata | jq -e '.limits.status == \"matching\" and .limits.memory == \"512Mi\"'")
    machine.succeed("curl -sf -H 'X-Request-ID: vm-test-1' http://127.0.0.1:9100/health")
    machine.wait_until_succeeds("journalctl -u nexus-template REQUEST_ID=vm-test-1 -o cat | grep -q /health")
    pid = machine.succeed("systemctl show -p MainPID --value nexus-template").strip()
    machine.succeed("systemctl reload nexus-template")
    assert pid == machine.succeed("systemctl show -p MainPID --value nexus-template").strip()
    machine.succeed("systemctl is-active nexus-template.socket")
    machine.succeed("systemctl restart nexus-template && curl -sf http://127.0.0.1:9100/readyz")
  '';
}
