from django.core.paginator import InvalidPage
from django.db.models import Func, IntegerField
from django.db.models import Subquery as _Subquery
from rest_framework.exceptions import NotFound
from rest_framework.pagination import PageNumberPagination


class Pagination(PageNumberPagination):
    """?page=N&page_size=M (at most 500)."""

    page_size_query_param = "page_size"
    max_page_size = 500

    def paginate_in_one_query(self, queryset, request, rows):
        """DRF's page of ``queryset`` (filtered and ordered) in one SQL query instead of a COUNT and a page:
        ``rows(ids, total, number, size)`` gets the page's primary keys as a subquery (the queryset's order,
        LIMIT and OFFSET), the total as a scalar subquery, and the page's number and size; it returns the
        page's rows (dicts, in order) with the total in each under ``"total"``. Each round trip to the
        database costs most where the database shares the CPU with the app (PostgreSQL): a page is one,
        whatever its place in the list. Only an empty page (past the end, or an empty list) or
        ``page=last`` asks for the count on its own."""
        self.request = request
        size = self.get_page_size(request)
        paginator = self.django_paginator_class(queryset, size)
        raw = request.query_params.get(self.page_query_param) or 1
        if raw in self.last_page_strings:
            raw = paginator.num_pages  # the COUNT query
        try:
            number = int(raw)
            if number < 1:
                raise ValueError(raw)
        except (TypeError, ValueError):
            raise NotFound(self.invalid_page_message.format(page_number=raw, message="That page number is not an "
                                                            "integer" if not str(raw).lstrip("-").isdigit()
                                                            else "That page number is less than 1")) from None
        ids = queryset.values("pk")[(number - 1) * size:number * size]
        total = _Subquery(queryset.order_by().annotate(_n=Func("pk", function="COUNT", output_field=IntegerField()))
                          .values("_n"))
        out = rows(ids, total, number, size)
        paginator.__dict__["count"] = out[0]["total"] if out else queryset.count()
        try:
            self.page = paginator.page(number)
        except InvalidPage as exc:
            raise NotFound(self.invalid_page_message.format(page_number=number, message=str(exc))) from None
        for row in out:
            del row["total"]
        return out
