"""Webmail routes: search."""

from django.urls import URLPattern, path

from webmail.views import search

urlpatterns: list[URLPattern] = [
    path("search/", search.search_view, name="search"),
]
