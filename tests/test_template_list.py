"""GET /api/templates/: one SQL query per page wherever the page is (plus the token's), and every answer
is what the database holds when it is asked: nothing is cached, so no list shows a template in a state
it has left."""

import pytest

from tests.fixtures.templates import create_template


@pytest.fixture
def api_token(db):
    from rest_framework.authtoken.models import Token
    from rest_framework.test import APIClient

    from tests.utils.users import user_with

    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {Token.objects.create(user=user_with('reader')).key}")
    return client


@pytest.fixture
def many(host, other_host):
    """23 templates, 2 disks each, alternately on two hosts; every third locked in SEAL."""
    return [create_template(host if i % 2 else other_host, f"tpl-{i:02d}", disks=2,
                            **({"status": "locked", "phase": "SEAL"} if i % 3 == 0 else {}))
            for i in range(23)]


@pytest.mark.parametrize(("query", "queries"), [
    # the token (and its user), then the page with its total and disk summary
    ("page=1", 2), ("page=3", 2), ("page=5", 2), ("page_size=500", 2), ("status=ok&page=2", 2),
    ("ordering=name&page=4", 2), ("search=tpl-1&page=2", 2), ("sealed=false&ordering=-status&page=2", 2),
    # the host filter looks the host up first (django-filter's choice validation), on every page alike
    ("host={host}&page=1", 3), ("host={host}&page=3", 3),
])
def test_a_page_is_one_query_after_the_token_wherever_it_is(api_token, many, host, query, queries,
                                                          django_assert_num_queries):
    q = query.format(host=host.pk)
    with django_assert_num_queries(queries):
        r = api_token.get(f"/api/templates/?page_size=5&{q}")
    assert r.status_code == 200, r.content
    assert r.json()["results"]


def test_page_last_costs_one_count_more(api_token, many, django_assert_num_queries):
    with django_assert_num_queries(3):  # page=last needs the count before the page
        assert len(api_token.get("/api/templates/?page_size=5&page=last").json()["results"]) == 3


def test_pages_cover_the_list_once_in_order_with_the_right_links(api_token, many):
    from templates.models import Template

    Template.objects.update(created=Template.objects.first().created)  # every tie: the order is still total
    seen, url = [], "/api/templates/?page_size=4"
    while url:
        body = api_token.get(url).json()
        assert body["count"] == 23
        seen += [t["id"] for t in body["results"]]
        url = body["next"]
    assert len(seen) == 23 == len(set(seen))
    assert seen == sorted(seen, reverse=True), "ties broken by id, newest first"
    last = api_token.get("/api/templates/?page_size=4&page=last").json()
    assert last["next"] is None
    assert last["previous"]
    assert len(last["results"]) == 3
    assert [t["disk_count"] for t in last["results"]] == [2, 2, 2]


@pytest.mark.parametrize("page", ["7", "0", "-1", "abc", "99999999"])
def test_a_page_outside_the_list_is_a_404(api_token, many, page):
    r = api_token.get(f"/api/templates/?page_size=4&page={page}")
    assert r.status_code == 404
    assert "detail" in r.json()


def test_an_empty_list_is_an_empty_first_page(api_token):
    body = api_token.get("/api/templates/").json()
    assert body == {"count": 0, "next": None, "previous": None, "results": []}
    assert api_token.get("/api/templates/?page=2").status_code == 404


def test_the_list_shows_each_template_as_it_is_now(api_token, many, host):
    """What a cache would get wrong: read, change the template through its own transitions (and its disks,
    and delete one), read again at once."""
    from hostjobs.models import HostJob, JobAction
    from templates.models import Template, TemplateDisk

    def row(tid):
        return next(t for t in api_token.get("/api/templates/?page_size=500").json()["results"] if t["id"] == tid)

    t = Template.objects.get(name="tpl-01")
    assert row(t.pk)["status"] == "ok"
    op = HostJob.create(host, JobAction.DELETE_TEMPLATE)
    t.lock_for_delete(op)
    assert (row(t.pk)["status"], row(t.pk)["job"]) == ("locked", str(op.pk))
    t.delete_incomplete("host gone")
    assert (row(t.pk)["status"], row(t.pk)["error"]) == ("failed", "host gone")
    TemplateDisk.objects.filter(template=t, index=1).delete()
    assert row(t.pk)["disk_count"] == 1
    assert row(t.pk)["size"] == TemplateDisk.objects.get(template=t).volume.size
    count = api_token.get("/api/templates/").json()["count"]
    Template.objects.filter(pk=t.pk).delete()
    body = api_token.get("/api/templates/?page_size=500").json()
    assert body["count"] == count - 1
    assert t.pk not in [x["id"] for x in body["results"]]
    assert api_token.get("/api/templates/?status=failed").json()["count"] == 0


def test_the_kept_sql_follows_the_list_as_it_changes(api_token, many):
    """The SQL of a page is kept by the request's parameters; what it reads is read every time: page=last
    after templates were removed is the new last page, a kept filter sees the new states."""
    from templates.models import Template

    first = api_token.get("/api/templates/?page_size=4&page=last").json()
    assert (first["count"], len(first["results"])) == (23, 3)
    ok_before = api_token.get("/api/templates/?status=ok&page_size=500").json()["count"]
    Template.objects.filter(name__in=["tpl-00", "tpl-01", "tpl-02", "tpl-04"]).delete()
    again = api_token.get("/api/templates/?page_size=4&page=last").json()
    assert again["count"] == 19
    assert [t["name"] for t in again["results"]] == ["tpl-06", "tpl-05", "tpl-03"]
    assert api_token.get("/api/templates/?status=ok&page_size=500").json()["count"] == ok_before - 3
    assert api_token.get("/api/templates/?page_size=4&page=6").status_code == 404


@pytest.mark.parametrize("zone", ["UTC", "Europe/Berlin"])
def test_times_are_what_drf_renders_in_the_current_time_zone(api_token, many, settings, zone):
    from rest_framework.fields import DateTimeField

    from templates.models import Template

    settings.TIME_ZONE = zone
    rows = api_token.get("/api/templates/?page_size=500").json()["results"]
    for row in rows:
        t = Template.objects.get(pk=row["id"])
        assert row["created"] == DateTimeField().to_representation(t.created)
        assert row["updated"] == DateTimeField().to_representation(t.updated)
    assert rows[0]["created"].endswith("Z" if zone == "UTC" else "+01:00")
