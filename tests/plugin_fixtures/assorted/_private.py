raise AssertionError("names starting with _ are not plugins")
