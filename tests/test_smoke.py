from tests.helpers.proc import run_service


def test_template_serves_echo(tmp_path):
    import json
    import urllib.request

    with run_service("template", tmp_path) as svc:
        req = urllib.request.Request(svc.url + "/v1/echo", data=json.dumps({"message": "hi"}).encode(),
                                     headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=5) as r:
            assert json.loads(r.read())["message"] == "echo: hi"


def test_etcd_fixture_answers(etcd):
    assert etcd.healthy()
